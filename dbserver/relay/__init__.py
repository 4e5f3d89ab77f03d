"""db relay: Sumatra's record cache near the jobs, forwarding saves to the HTTP store."""
