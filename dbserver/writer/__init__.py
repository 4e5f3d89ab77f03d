"""The write server: one loop that checks, group-commits and answers every write."""
