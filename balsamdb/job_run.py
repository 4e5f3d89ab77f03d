"""Run a job: claim it, mark it RUNNING, renew its lease while it runs, record how it ended.

Used by ``db run [JOB_ID] -- CMD`` (:func:`run_command`) and ``with db.jobs.running(job_id):``
(:class:`Running`).  The claim is a lease on the server's clock (``job_acquire``): a thread
renews it every third of its length; if this process dies (even SIGKILL), the renewals stop
and the write server finds the run lost within one lease (RUN_TIMEOUT, then RESTART_READY by
the workflow's policy).

The hook for what wraps a command (``db run --record`` captures provenance there):
:func:`run_command` takes ``around``, a function of the :class:`Running` that returns a
context manager, entered after the job is RUNNING and exited after the command ended (its
``returncode``, ``stdout_tail`` and ``stderr_tail`` set, before the end state is written), so
what it adds to ``run.data`` is stored in the job's data with the rest.
"""

import collections
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time

from .exceptions import BalsamDBError, Conflict, NotFound

log = logging.getLogger(__name__)

#: The states a job may be run from (RUNNING is legal from each; AWAITING_PARENTS waits).
RUNNABLE = ("READY", "RESTART_READY", "CREATED", "STAGED_IN", "PREPROCESSED")
TAIL_BYTES = 4096  # of stdout and of stderr kept in the job's data


def _handle_for_thread(db):
    """A handle the renewing thread may use beside the caller's: a ZeroMQ socket belongs to one
    thread, so a DB directory gets a connection of its own (an HTTP store's pool is shared)."""
    dbdir = getattr(db, "dbdir", None)
    if dbdir is None:
        return db
    return type(db)(dbdir, db.settings)


class LeaseRenewer(threading.Thread):
    """Renews the lease of ``owner`` on ``job_id`` every ``lease / 3`` seconds until stopped;
    ``lost`` is set (and ``on_lost`` called) when the server says the job is no longer held."""

    def __init__(self, db, job_id, owner, lease, on_lost=None):
        super().__init__(name=f"lease-renewer-{job_id[:8]}", daemon=True)
        self.db = _handle_for_thread(db)
        self.own_handle = self.db is not db
        self.job_id, self.owner, self.lease = job_id, owner, lease
        self.on_lost = on_lost
        self.stopped = threading.Event()
        self.lost = False
        self.renewals = 0

    def run(self):
        try:
            while not self.stopped.wait(self.lease / 3):
                try:
                    answer = self.db.jobs.renew([self.job_id], owner=self.owner)
                except BalsamDBError as exc:  # the server restarts: the next tick tries again
                    log.warning("could not renew the lease of job %s: %s", self.job_id, exc)
                    continue
                if answer["lost"]:
                    self.lost = True
                    log.error("job %s: the lease of %s was lost (the server found the run lost)",
                              self.job_id, self.owner)
                    if self.on_lost is not None:
                        self.on_lost()
                    return
                self.renewals += 1
        finally:
            if self.own_handle:
                self.db.close()

    def stop(self):
        self.stopped.set()
        self.join()


class Running:
    """The context manager of ``db.jobs.running()``: on entry the job (created first when
    ``job_id`` is None, from ``create``) is claimed and RUNNING; on exit it is RUN_DONE, or
    RUN_ERROR when the block raised or set ``returncode`` to non-zero, with ``data`` merged
    into the job's data under ``"run"``, and the claim released.  ``job``: the job."""

    def __init__(self, db, job_id=None, owner=None, lease=60.0, create=None):
        from .identity import default_owner

        self.db = db
        self.job_id = job_id
        self.owner = owner or default_owner()
        self.lease = float(lease)
        self.create = dict(create or {})
        self.job = None
        self.returncode = None
        self.stdout_tail = self.stderr_tail = ""
        self.data = {}  # merged into the job's data["run"] at the end
        self.lost = False
        self.renewer = None
        self.on_lost = None  # called (from the renewing thread) when the lease is lost

    def __enter__(self):
        jobs = self.db.jobs
        if self.job_id is None:
            if not self.create.get("name"):
                raise ValueError("give a job id, or name= for a job to create")
            spec = dict(self.create)
            spec.setdefault("state", "READY")
            created = jobs.create(spec.pop("name"), **spec)
            if getattr(created, "spooled", False) is True and created.spool is not None:
                raise Conflict("the new job waits in the spool (no server answers); it cannot be run now")
            self.job_id = created.id
        self.job_id = jobs._full_id(self.job_id)
        claimed = jobs.acquire(1, owner=self.owner, lease=self.lease, states=RUNNABLE, ids=[self.job_id])
        if not claimed:
            raise Conflict(self._why_not_runnable())
        self.job = claimed[0]
        self.started = time.time()
        self.job = jobs.update_state(self.job_id, "RUNNING", f"started by {self.owner}", owner=self.owner)
        self.renewer = LeaseRenewer(self.db, self.job_id, self.owner, self.lease, on_lost=self._lost)
        self.renewer.start()
        return self

    def _lost(self):
        self.lost = True
        if self.on_lost is not None:
            self.on_lost()

    def _why_not_runnable(self):
        try:
            job = self.db.call("job_get", job_id=self.job_id)
        except NotFound:
            return f"no job with id {self.job_id}"
        if job.get("owner") and job["state"] in RUNNABLE:
            return (f"job {self.job_id} is held by {job['owner']} until {time.ctime(job['lease_expires'])}; "
                    "it cannot be run now")
        waiting = ", ".join(p["id"][:8] + " " + p["state"] for p in job.get("waiting_on") or [])
        return (f"job {self.job_id} is {job['state']}: it runs from {', '.join(RUNNABLE)}"
                + (f" (it waits for {waiting})" if waiting else ""))

    def __exit__(self, exc_type, exc, tb):
        if self.renewer is not None:
            self.renewer.stop()
        if self.lost:
            log.error("job %s was found lost while it ran; its end is not recorded", self.job_id)
            return False
        ended = time.time()
        failed = exc_type is not None or (self.returncode not in (None, 0))
        run = {"owner": self.owner, "started_at": self.started, "ended_at": ended,
               "exit_status": self.returncode}
        if exc_type is not None:
            run["error"] = f"{exc_type.__name__}: {exc}"[:1000]
        if self.stdout_tail or self.stderr_tail:
            run.update(stdout_tail=self.stdout_tail, stderr_tail=self.stderr_tail)
        run.update(self.data)
        jobs = self.db.jobs
        job = jobs.get(self.job_id)
        data = dict(job.data or {})
        data["run"] = run
        jobs.modify(self.job_id, data=data)
        state = "RUN_ERROR" if failed else "RUN_DONE"
        if self.returncode is not None:
            message = f"exit status {self.returncode}"
        else:
            message = run.get("error", "finished")
        self.job = jobs.update_state(self.job_id, state, message, owner=self.owner)
        jobs.release([self.job_id], owner=self.owner)
        return False


class _Tail:
    """The last ``limit`` bytes of a stream, copied on to ``echo`` as they come."""

    def __init__(self, stream, echo, limit):
        self.chunks = collections.deque()
        self.size = 0
        self.limit = limit
        self.thread = threading.Thread(target=self._read, args=(stream, echo), daemon=True)
        self.thread.start()

    def _read(self, stream, echo):
        for chunk in iter(lambda: stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536), b""):
            if echo is not None:
                try:
                    echo.write(chunk)
                    echo.flush()
                except (OSError, ValueError):
                    echo = None
            self.chunks.append(chunk)
            self.size += len(chunk)
            while self.size - len(self.chunks[0]) >= self.limit:
                self.size -= len(self.chunks.popleft())

    def text(self):
        self.thread.join()
        data = b"".join(self.chunks)[-self.limit:]
        return data.decode("utf-8", "replace")


def run_command(db, command, job_id=None, owner=None, lease=60.0, tail_bytes=TAIL_BYTES, around=None,
                create=None, echo=True):
    """Run ``command`` (a list of arguments) as job ``job_id`` (created from ``create`` when
    None) in the job's working directory, with ``BALSAM_JOB_ID`` and ``BALSAM_DB_PATH`` set;
    returns the :class:`Running` (``returncode``, ``job``).  ``around``: see the module's doc.
    The command is killed when its lease is lost."""
    running = Running(db, job_id, owner=owner, lease=lease, create=create)
    with running:
        workdir = running.job.working_directory
        os.makedirs(workdir, exist_ok=True)
        env = dict(os.environ, BALSAM_JOB_ID=running.job_id)
        if getattr(db, "dbdir", None) is not None:
            env["BALSAM_DB_PATH"] = str(db.path)
        with (around(running) if around is not None else contextlib.nullcontext()):
            process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            running.on_lost = process.kill
            out = _Tail(process.stdout, sys.stdout.buffer if echo else None, tail_bytes)
            err = _Tail(process.stderr, sys.stderr.buffer if echo else None, tail_bytes)
            try:
                running.returncode = process.wait()
            except BaseException:  # Ctrl-C, SIGTERM turned into an exception: the command goes too
                process.kill()
                process.wait()
                raise
            finally:
                running.stdout_tail, running.stderr_tail = out.text(), err.text()
    return running
