"""Capture a command's run (``db run --record PROJECT -- CMD ...``): run it with its output
passed through as it comes and its tail kept, and save its record when it ends."""

import os
import signal
import subprocess
import sys
import threading

from . import facts
from .capture import Capture, TailKeeper

#: Interpreters whose first argument that names a file is the main file (``python sim.py``).
SCRIPT_RUNNERS = ("python", "bash", "sh", "Rscript", "perl", "julia", "node")


def main_file_of(argv, cwd):
    """The main file of command ``argv``: the script an interpreter runs, else the program."""
    program = os.path.basename(argv[0])
    if any(program == r or program.startswith(r) for r in SCRIPT_RUNNERS):
        for arg in argv[1:]:
            if arg == "-c" or arg == "-m":
                return None
            if not arg.startswith("-") and os.path.isfile(os.path.join(cwd, arg)):
                return os.path.join(cwd, arg)
    return facts.executable_info(argv[0])["path"]


def _pump(stream, out, keeper):
    for block in iter(lambda: stream.read1(65536), b""):
        keeper.add(block)
        try:
            out.write(block)
            out.flush()
        except (OSError, ValueError):
            pass


def _start(cap, argv, cwd):
    """Begin ``cap``'s run of command ``argv`` in ``cwd``: its main file, executable, arguments."""
    main = main_file_of(argv, cwd)
    executable = facts.executable_info(argv[0])
    arguments = argv[1:]
    for index, arg in enumerate(argv[1:], 1):
        if main and os.path.join(cwd, arg) == main:  # what follows the script is its arguments
            arguments = argv[index + 1:]
            break
    cap.start("command", command=list(argv), main_file=main, executable=executable, arguments=arguments)
    if main and main.endswith(".py"):
        cap.run.dependencies = facts.imported_by(main)


class RecordAround:
    """``db run --record PROJECT``: the runner's ``around`` hook (balsamdb.job_run) that records
    the job's run.  ``RecordAround(project, command, **options)(running)`` is the context manager;
    the record's project and label go into the job's data (``run.record``)."""

    def __init__(self, project, command, **options):
        self.project, self.command, self.options = project, list(command), options
        self.capture = None

    def __call__(self, running):
        self.running = running
        return self

    def __enter__(self):
        running = self.running
        cwd = running.job.working_directory
        self.capture = Capture(self.project, db=running.db, job=running.job_id, working_directory=cwd,
                               **self.options)
        _start(self.capture, self.command, cwd)
        return self.capture

    def __exit__(self, kind, error, _tb):
        running = self.running
        status = running.returncode
        if status is None:
            status, outcome = 1, f"failed: {kind.__name__ if kind else 'no exit status'}"
        else:
            status = 128 - status if status < 0 else status
            outcome = "" if status == 0 else f"failed: exit status {status}"
        tail = running.stdout_tail or ""
        if running.stderr_tail:
            tail += ("\n" if tail and not tail.endswith("\n") else "") + "[stderr]\n" + running.stderr_tail
        self.capture.finish(status, outcome, output_tail=tail)
        running.data["record"] = {"project": self.project, "label": self.capture.run.label}
        return False


def run_command(argv, project, env=None, **options):
    """Run ``argv`` (a list) in the working directory, record it in ``project``; returns
    ``(exit status, Capture)``.  ``options``: those of :class:`Capture`.  The exit status is the
    command's (128 + n for a signal n, as a shell says), 127 when it cannot be started."""
    if not argv:
        raise ValueError("no command to run")
    cap = Capture(project, **options)
    cwd = os.path.abspath(options.get("working_directory") or os.getcwd())
    _start(cap, argv, cwd)
    keeper = cap._tail
    try:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        keeper.add(f"cannot start {argv[0]}: {exc.strerror or exc}\n")
        print(f"db run: cannot start {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        cap.finish(127, f"failed: cannot start {argv[0]}")
        return 127, cap
    pumps = [threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, keeper), daemon=True),
             threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, keeper), daemon=True)]
    for pump in pumps:
        pump.start()
    forwarded = {}
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            forwarded[signum] = signal.signal(signum, lambda n, _f: child.send_signal(n))
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        status = child.wait()
        for pump in pumps:
            pump.join()
    finally:
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)
    status = 128 - status if status < 0 else status
    outcome = "" if status == 0 else f"failed: exit status {status}"
    cap.finish(status, outcome)
    return status, cap
