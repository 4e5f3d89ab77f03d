"""PostgreSQL: a DB directory's own cluster (initdb, start, stop, health) and the host's binaries."""
