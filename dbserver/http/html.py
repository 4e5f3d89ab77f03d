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
    executable = doc.get("executable") or {}
    repository = doc.get("repository") or {}
    return [
        ("timestamp", doc.get("timestamp")), ("reason", doc.get("reason")), ("outcome", doc.get("outcome")),
        ("duration", seconds(doc.get("duration"))), ("user", doc.get("user")),
        ("main file", doc.get("main_file")), ("version", doc.get("version")),
        ("repository", repository.get("url") if isinstance(repository, dict) else repository),
        ("executable", " ".join(str(executable.get(k) or "") for k in ("name", "version", "path"))
         if isinstance(executable, dict) else executable),
        ("arguments", doc.get("script_arguments")),
    ]


# -- the application ---------------------------------------------------------------------------------------

def url_part(text):
    """A project name or label as it goes into a URL (``/`` kept: labels may hold it)."""
    return quote(str(text), safe="/:|@!$'()*+,;=-._~")
