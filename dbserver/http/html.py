"""The HTML pages of the Sumatra API (templates in ``dbserver/http/templates/store_*.html``, escaped by
Jinja's autoescaping) and their filters."""

import time
from pathlib import Path
from urllib.parse import quote

TEMPLATES = Path(__file__).resolve().parent / "templates"
HTML_RECORD_LIMIT = 50           # records shown on a project's HTML page (whole documents are read)
HTML_OUTPUT_CHARS = 100_000      # program output shown on a record's HTML page


def _template(name):
    # Rendered with render_template_string, as when they were inline (Jinja drops the final newline).
    return (TEMPLATES / name).read_text(encoding="utf-8")


LAYOUT = _template("store_layout.html")
PROJECTS = _template("store_projects.html")
PROJECT = _template("store_project.html")
RECORD = _template("store_record.html")
VERSIONS = _template("store_versions.html")
ERROR = _template("store_error.html")


def seconds(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f} s"
    return ""


def utc(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) if isinstance(seconds, (int, float)) else ""


def record_fields(doc):
    """The rows of a record's page: (name, text); a missing value (None) is blank, not "None"."""
    executable = doc.get("executable") or {}
    repository = doc.get("repository") or {}
    rows = [
        ("timestamp", doc.get("timestamp")), ("reason", doc.get("reason")), ("outcome", doc.get("outcome")),
        ("duration", seconds(doc.get("duration"))), ("user", doc.get("user")),
        ("main file", doc.get("main_file")), ("version", doc.get("version")),
        ("repository", repository.get("url") if isinstance(repository, dict) else repository),
        ("executable", " ".join(str(executable.get(k) or "") for k in ("name", "version", "path"))
         if isinstance(executable, dict) else executable),
        ("arguments", doc.get("script_arguments")),
    ]
    return [(name, "" if value is None else value) for name, value in rows]


def record_job(doc):
    """The job a record names (``balsamdb.job``: id, workflow, name, run), or None."""
    extra = doc.get("balsamdb") if isinstance(doc.get("balsamdb"), dict) else {}
    job = extra.get("job")
    return job if isinstance(job, dict) and isinstance(job.get("id"), str) else None


def record_files(doc):
    """The input and output files of a record: ``[(role, path, sha256 or "", size or "")]``."""
    rows = []
    for role, key in (("input", "input_data"), ("output", "output_data")):
        for item in doc.get(key) or []:
            if isinstance(item, dict) and item.get("path"):
                meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
                rows.append((role, item["path"], meta.get("sha256") or "", "" if meta.get("size") is None
                             else meta["size"]))
    return rows


# -- the application ---------------------------------------------------------------------------------------

def url_part(text):
    """A project name or label as it goes into a URL (``/`` kept: labels may hold it)."""
    return quote(str(text), safe="/:|@!$'()*+,;=-._~")
