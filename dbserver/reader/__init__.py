"""The read service: reads beside the write server, on read-only connections (see :mod:`.service`)."""
