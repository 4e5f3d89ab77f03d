"""The write server's counters, which ``status`` reports."""

import time


class Stats:
    """Counters that ``status`` reports."""

    def __init__(self):
        self.started = time.time()
        self.requests = 0
        self.writes = 0
        self.errors = 0
        self.rejected = 0
        self.batches = 0
        self.spooled = 0
        self.holding_replies = 0  # to live requests held behind spooled writes
        self.batched_requests = 0
        self.last_batch = 0
        self.max_batch = 0
        self.commit_seconds = 0.0
        self.pruned = 0
        self.reads_refused = 0  # reads sent here: they go to the read service (or the client reads itself)
        self.lost_runs = 0            # RUNNING jobs whose lease expired: RUN_TIMEOUT
        self.lost_runs_restarted = 0  # ... and on to RESTART_READY by their workflow's policy
        self.claims_expired = 0       # claimed jobs not yet RUNNING whose lease expired: released

    def committed(self, requests, seconds):
        """Count a committed batch of ``requests`` (answered) that took ``seconds``."""
        self.commit_seconds += seconds
        self.batches += 1
        self.batched_requests += len(requests)
        self.last_batch = len(requests)
        self.max_batch = max(self.max_batch, len(requests))
        for request in requests:
            if not request.answer.get("ok"):
                self.errors += 1
            elif request.write:
                self.writes += 1

    def to_dict(self):
        return {
            "uptime": time.time() - self.started,
            "requests": self.requests,
            "spooled_applied": self.spooled,
            "holding_replies": self.holding_replies,
            "writes": self.writes,
            "errors": self.errors,
            "rejected": self.rejected,
            "batches": self.batches,
            "last_batch": self.last_batch,
            "max_batch": self.max_batch,
            "mean_batch": self.batched_requests / self.batches if self.batches else 0.0,
            "mean_commit_ms": 1000 * self.commit_seconds / self.batches if self.batches else 0.0,
            "pruned_request_ids": self.pruned,
            "reads_refused": self.reads_refused,
            "lost_runs": self.lost_runs,
            "lost_runs_restarted": self.lost_runs_restarted,
            "claims_expired": self.claims_expired,
        }
