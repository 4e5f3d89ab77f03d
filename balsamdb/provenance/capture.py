"""Capture the provenance of a run from inside it, as one Sumatra record linked to its job.

    import balsamdb

    @balsamdb.capture(project="sweep", inputs=["data/*.csv"], parameters="params.yaml")
    def main():
        ...

    with balsamdb.capture(project="sweep") as rec:   # the same, around a block
        ...
        rec.outcome = "converged after 12 steps"

What is recorded, and the label rule: docs/provenance.md.  The record is saved with
``db.records.save`` when the run ends, so it takes the path of every write: to the server,
directly to SQLite, or into the spool when no server can take it.  A record that cannot be
saved at all is written to ``balsamdb-record-<label>.json`` in the working directory.
"""

import collections
import getpass
import os
import sys
import time
from datetime import datetime, timezone

from . import facts, files, record_doc

#: The environment variables that name the job a process runs for (`db run` sets the first).
JOB_ENV = "BALSAM_JOB_ID"
JOB_ENV_ALSO = "BALSAMDB_JOB_ID"
DEFAULT_TAIL = 64 * 1024
DEFAULT_DIFF = 1024 * 1024


class Run:
    """Everything known about one run; :func:`record_doc.build` turns it into the record."""

    def __init__(self, kind, project, working_directory):
        self.kind = kind  # "python" or "command"
        self.project = project
        self.working_directory = working_directory
        self.started = datetime.now(timezone.utc).astimezone()
        self.started_monotonic = time.monotonic()
        self.label = None
        self.reason = ""
        self.outcome = ""
        self.tags = []
        self.user = ""
        self.duration = None
        self.executable = {}
        self.main_file = ""
        self.script_arguments = ""
        self.command = []
        self.parameter_file = None
        self.repository = {"url": "", "type": "Repository", "upstream": None}
        self.version = ""
        self.diff = ""
        self.notes = []
        self.inputs = []
        self.outputs = []
        self.output_tail = ""
        self.exit_status = None
        self.dependencies = []
        self.platform = {}
        self.job = None


def _user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def job_facts(db, job_id):
    """``{"id", "workflow", "name", "run"}`` of job ``job_id``; ``run`` is the number of times it
    entered RUNNING (None, and name/workflow from the environment, when the store cannot say)."""
    job = {"id": str(job_id), "workflow": os.environ.get("BALSAMDB_JOB_WORKFLOW"),
           "name": os.environ.get("BALSAMDB_JOB_NAME"), "run": None}
    if db is None:
        return job
    try:
        found = db.jobs.get(job_id)
        history = db.jobs.history(found.id)
    except Exception as exc:  # noqa: BLE001 - the store is down or the job unknown: record what we know
        job["note"] = f"job details not read: {exc}".splitlines()[0]
        return job
    runs = sum(1 for change in history if change.get("to_state") == "RUNNING")
    job.update(id=found.id, workflow=found.workflow, name=found.name, run=runs or None)
    return job


class OutputTail:
    """A file-like object that passes writes on to ``stream`` and keeps their last ``limit`` characters."""

    def __init__(self, stream, keeper):
        self._stream = stream
        self._keeper = keeper

    def write(self, text):
        self._keeper.add(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class TailKeeper:
    """The last ``limit`` characters written to it (and how many were dropped before them)."""

    def __init__(self, limit):
        self.limit = limit
        self.chunks = collections.deque()
        self.kept = 0
        self.dropped = 0

    def add(self, text):
        if not text:
            return
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.chunks.append(text)
        self.kept += len(text)
        while self.kept - len(self.chunks[0]) >= self.limit:
            self.kept -= len(self.chunks[0])
            self.dropped += len(self.chunks.popleft())

    def text(self):
        text = "".join(self.chunks)
        extra = len(text) - self.limit
        dropped = self.dropped + max(extra, 0)
        text = text[max(extra, 0):]
        if dropped:
            return f"[balsamdb: the first {dropped} characters of the output are not kept; the last {len(text)} are]\n" + text
        return text


class Capture:
    """``balsamdb.capture(project, ...)``: a context manager and a decorator.

    Parameters: ``project`` (the record's project); ``inputs`` / ``outputs``: paths or globs
    (relative to the working directory) of the input files and of outputs besides the files
    found changed under the working directory; ``parameters``: a parameter file (YAML, JSON,
    INI/cfg, or Sumatra's simple format); ``reason``, ``tags``, ``label`` (else the rule of
    docs/provenance.md); ``job``: the job id (default ``$BALSAM_JOB_ID``, which `db run` sets, or ``$BALSAMDB_JOB_ID``); ``db`` (a
    :class:`balsamdb.Database`) or ``path`` (its DB directory); ``max_digest_bytes``: files
    larger than this are listed without digests; ``tail_chars``: how much program output is
    kept; ``working_directory`` (default: the current one); ``find_outputs`` (walk it)."""

    def __init__(self, project, inputs=(), outputs=(), parameters=None, reason="", tags=(), label=None, job=None,
                 db=None, path=None, max_digest_bytes=None, tail_chars=DEFAULT_TAIL, diff_chars=DEFAULT_DIFF,
                 working_directory=None, find_outputs=True):
        if not isinstance(project, str) or not project:
            raise ValueError("balsamdb.capture needs project='name'")
        self.options = dict(project=project, inputs=list(inputs or ()), outputs=list(outputs or ()),
                            parameters=parameters, reason=reason, tags=list(tags or ()), label=label, job=job,
                            db=db, path=path, max_digest_bytes=max_digest_bytes, tail_chars=tail_chars,
                            diff_chars=diff_chars, working_directory=working_directory, find_outputs=find_outputs)
        self.run = None
        self.saved = None  # what the save answered: True (new), False (replaced), a SpooledWrite
        self._db = None
        self._own_db = False
        self._snapshot = None
        self._tail = None
        self._streams = None

    # -- the run's life ------------------------------------------------------------------------------------
    def start(self, kind="python", command=None, main_file=None, executable=None, arguments=None):
        """Begin a run: note the time, the code, the platform, the inputs, the files present."""
        opts = self.options
        wd = os.path.abspath(opts["working_directory"] or os.getcwd())
        run = self.run = Run(kind, opts["project"], wd)
        run.reason, run.tags, run.user = opts["reason"], opts["tags"], _user()
        run.command = list(command if command is not None else [sys.executable, *sys.argv])
        if kind == "python":
            main_file = main_file or getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0]
            executable = executable or facts.executable_info(sys.executable)
            arguments = sys.argv[1:] if arguments is None else arguments
        run.executable = executable or {}
        run.script_arguments = " ".join(_quote(a) for a in (arguments or ()))
        if opts["parameters"]:
            run.parameter_file = os.path.abspath(os.path.join(wd, opts["parameters"]))
        run.platform = facts.platform_info()
        run.repository, run.version, diff, note = facts.git_state(os.path.dirname(os.path.abspath(main_file))
                                                                   if main_file else wd)
        run.diff = diff
        run.notes.append(note)
        run.main_file = _main_file_name(main_file, run.repository.get("url"), wd)
        self._db = opts["db"]
        if self._db is None:
            from ..api import connect

            self._db = connect(opts["path"])
            self._own_db = True
        job_id = opts["job"] or os.environ.get(JOB_ENV) or os.environ.get(JOB_ENV_ALSO)
        if job_id:
            run.job = job_facts(self._db, job_id)
            run.notes.append(run.job.pop("note", ""))
        run.label = opts["label"] or record_doc.make_label(run.started, run.job, os.getpid())
        declared = files.expand(opts["inputs"], wd)
        named = [p for p in files.expand([a for a in (arguments or ()) if not str(a).startswith("-")], wd)
                 if main_file is None or os.path.abspath(p) != os.path.abspath(main_file)]
        run.inputs = [files.data_key(p, wd, opts["max_digest_bytes"]) for p in dict.fromkeys(declared + named)]
        if run.parameter_file and os.path.isfile(run.parameter_file) and run.parameter_file not in declared + named:
            run.inputs.append(files.data_key(run.parameter_file, wd, opts["max_digest_bytes"]))
        db_dir = getattr(self._db, "path", None)
        self._snapshot = files.Snapshot(wd, skip=[db_dir]) if opts["find_outputs"] else None
        self._tail = TailKeeper(opts["tail_chars"])
        return run

    def tee_python_output(self):
        """Keep the tail of what this process writes to sys.stdout and sys.stderr."""
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = OutputTail(sys.stdout, self._tail)
        sys.stderr = OutputTail(sys.stderr, self._tail)

    def finish(self, exit_status=0, outcome=None, output_tail=None):
        """End the run: find the outputs, build the record, save it.  Returns the record document."""
        run = self.run
        if self._streams:
            sys.stdout, sys.stderr = self._streams
            self._streams = None
        run.duration = round(time.monotonic() - run.started_monotonic, 6)
        run.exit_status = exit_status
        if outcome is not None and not run.outcome:
            run.outcome = outcome
        run.output_tail = output_tail if output_tail is not None else self._tail.text()
        if self.run.kind == "python":
            run.dependencies = facts.loaded_dependencies()
        opts = self.options
        outputs = files.expand(opts["outputs"], run.working_directory)
        if self._snapshot is not None:
            outputs += self._snapshot.changed()
            if self._snapshot.truncated:
                run.notes.append(f"the working directory holds more than {files.MAX_WALK} files: "
                                 "outputs were looked for among the first of them only")
        # Inputs changed in place are outputs too; an input left alone is not among the changed files.
        run.outputs = [files.data_key(path, run.working_directory, opts["max_digest_bytes"])
                       for path in dict.fromkeys(outputs) if os.path.isfile(path)]
        doc = record_doc.build(run)
        limit = self._db.settings.max_request_bytes if self._db is not None else 64 * 1024 * 1024
        record_doc.fit(doc, limit, {"stdout_stderr": opts["tail_chars"], "diff": opts["diff_chars"]})
        self.document = doc
        self._save(doc)
        return doc

    def _save(self, doc):
        try:
            self.saved = self._db.records.save(self.run.project, doc)
        except Exception as exc:  # noqa: BLE001 - never lose the record: keep it beside the run
            import json

            fallback = os.path.join(self.run.working_directory, f"balsamdb-record-{doc['label']}.json")
            with open(fallback, "w", encoding="utf-8") as handle:
                json.dump({"project": self.run.project, "record": doc}, handle, indent=1)
            print(f"balsamdb.capture: the record was not saved ({str(exc).splitlines()[0]}); "
                  f"it is in {fallback}", file=sys.__stderr__)
            self.saved = None
        finally:
            if self._own_db:
                self._db.close()

    # -- context manager and decorator --------------------------------------------------------------------
    @property
    def outcome(self):
        return self.run.outcome if self.run else ""

    @outcome.setter
    def outcome(self, text):
        self.run.outcome = str(text)

    @property
    def label(self):
        return self.run.label if self.run else self.options["label"]

    def add_output(self, path):
        """Declare one more output file (a path or glob), for files outside the working directory."""
        self.options["outputs"].append(path)

    def __enter__(self):
        self.start("python")
        self.tee_python_output()
        return self

    def __exit__(self, kind, error, _tb):
        if kind is None:
            self.finish(0)
        elif issubclass(kind, SystemExit):
            code = error.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            self.finish(status, None if status == 0 else f"failed: exit status {status}")
        else:
            self.finish(1, f"failed: {kind.__name__}: {error}".splitlines()[0])
        return False

    def __call__(self, function):
        import functools

        @functools.wraps(function)
        def captured(*args, **kwargs):
            with Capture(**self.options):
                return function(*args, **kwargs)

        return captured


def _main_file_name(main_file, repository_root, wd):
    """As Sumatra names the main file: relative to the repository's root; outside a repository,
    relative to the working directory when inside it, else absolute."""
    if not main_file:
        return ""
    path = os.path.abspath(main_file)
    for root in (repository_root, wd):
        if root and path.startswith(os.path.abspath(root) + os.sep):
            return os.path.relpath(path, root)
    return path


def _quote(arg):
    import shlex

    return shlex.quote(str(arg))


def capture(project, **options):
    """See :class:`Capture`."""
    return Capture(project, **options)
