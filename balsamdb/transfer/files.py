"""Export files: writing a store into one, reading one (or a Sumatra store) into a store."""

import json
import os
import time
from pathlib import Path

from ..exceptions import BadRequest, TransferError
from ..operations import sort_time
from ..operations.store_lines import LINE_KINDS
from ..operations.digests import Digester
from ..operations.stores import KINDS, canonical
from ..wording import shell_path
from .copying import Progress
from .paging import PAGE, import_batch, pages

EXPORT_FORMAT = 1

# -- export and import files ---------------------------------------------------------------------------------

def export_store(src, out, progress=False):
    """Write every item of ``src`` to the binary file object ``out``, one JSON object per line:
    a header ``{"balsamdb_export": 1, "kinds": [...]}``, the items in kind and key order,
    and a footer ``{"end": true, "counts": {...}, "digests": {...}}``.  Returns the footer."""
    kinds = [k for k in KINDS if k in src.kinds]
    counts = src.counts()
    bar = Progress(progress, sum(counts.get(k, 0) for k in kinds), "export")
    digester = Digester()
    written = {}
    out.write((canonical({"balsamdb_export": EXPORT_FORMAT, "kinds": kinds}) + "\n").encode())
    try:
        for kind in kinds:
            written[kind] = 0
            for count in _write_kind(src, kind, out, digester):
                written[kind] += count
                bar.update(count, f"{kind}s")
    finally:
        bar.close()
    footer = {"end": True, "counts": written, "digests": digester.result()}
    out.write((canonical(footer) + "\n").encode())
    return footer


def _write_kind(src, kind, out, digester):
    """Write the items of ``kind`` page by page, one write a page; yields each page's count.
    Records and jobs of a store read here come as lines (see
    :mod:`balsamdb.operations.store_lines`), the rest as items."""
    line_pages = getattr(src, "line_pages", None)
    lines = line_pages(kind) if kind in LINE_KINDS and line_pages is not None else None
    if lines is None:
        for page in pages(src, kind):
            texts = [canonical(item) for item in page["items"]]
            out.write("".join(text + "\n" for text in texts).encode())
            for item in page["items"]:
                digester.add(item)
            yield len(texts)
        return
    for page in lines:
        data = []
        for line, group, content in page["lines"]:
            line = line.encode()
            data.append(line)
            digester.add_content(group, line if content is None else content.encode())
        if data:
            data.append(b"")
            out.write(b"\n".join(data))
        yield len(page["lines"])


def export_file(src, path, progress=False):
    """Write the export of store ``src`` into file ``path``, atomically and privately: into a
    temporary file beside it that only this process can have made (mode 600, see
    :func:`balsamdb.private_files.private_replacement`), flushed to disk, then renamed, so that a
    file named ``path`` is always complete and no other user can read or capture it (an OSError
    removes the temporary file).  Returns the footer, as :func:`export_store`."""
    from ..private_files import private_replacement

    with private_replacement(path) as out:
        return export_store(src, out, progress=progress)


def _last_line(path):
    """The last non-empty line of a file, however long, read from the end."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        data = b""
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            data = handle.read(end - start) + data
            end = start
            stripped = data.rstrip(b"\n")
            if b"\n" in stripped:
                return stripped.rsplit(b"\n", 1)[1]
        return data.rstrip(b"\n")


DEEPEST = 900  # about the nesting Python's json reads within its recursion limit (1000)


def read_footer(path):
    """The footer of an export file; :class:`TransferError` when it has none (a truncated file)."""
    try:
        footer = json.loads(_last_line(path))
    except RecursionError:
        raise TransferError(f"{path}: its last line is nested too deeply to read (more than "
                            f"{DEEPEST} levels); nothing was imported") from None
    except ValueError:
        footer = None
    if not isinstance(footer, dict) or footer.get("end") is not True:
        raise TransferError(f"{path} has no end line: it is truncated or not a balsamdb export; nothing was imported")
    return footer


def check_export(path, footer):
    """Count the items of an export file against its end line, before anything is written."""
    counts = {}
    for item in _export_items(path):
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    expected = {k: v for k, v in (footer.get("counts") or {}).items() if v}
    if counts != expected:
        raise TransferError(f"{path} holds {counts} items but its end line says {expected}: the file is damaged; "
                            "nothing was imported")


def _export_items(path):
    with open(path, "rb") as handle:
        header = handle.readline()
        try:
            head = json.loads(header)
        except (ValueError, RecursionError):
            head = None
        if not isinstance(head, dict) or "balsamdb_export" not in head:
            raise BadRequest(f"{path} is not a balsamdb export (its first line is not the header)")
        if head["balsamdb_export"] != EXPORT_FORMAT:
            raise BadRequest(f"{path} is export format {head['balsamdb_export']}; this balsamdb reads format "
                             f"{EXPORT_FORMAT}")
        for number, line in enumerate(handle, start=2):
            try:
                item = json.loads(line)
            except RecursionError:  # json's decoder recurses: a line 100,000 levels deep is a RecursionError
                raise BadRequest(f"{path}, line {number}: nested too deeply to read (more than {DEEPEST} "
                                 "levels); nothing was imported") from None
            except ValueError:
                raise BadRequest(f"{path}, line {number}: not JSON") from None
            if isinstance(item, dict) and item.get("end") is True:
                return
            if not isinstance(item, dict) or item.get("kind") not in KINDS:
                raise BadRequest(f"{path}, line {number}: not an item")
            yield item


def _smt_items(path, project):
    from ..sumatra_export import read_smt_export

    # Records only: their project is made when missing, and an existing one keeps its settings.
    for name, document in read_smt_export(path, project=project):
        when = sort_time(document.get("timestamp"))
        yield {"kind": "record", "project": name, "label": document["label"], "document": document,
               "created_at": when, "updated_at": when}


def _sumatra_store_items(path, project, kind):
    """The records of Sumatra's own store (each as ``smt`` would send it), as items."""
    from ..sumatra_store import read_sumatra_store

    items = []
    for name, document in read_sumatra_store(path, kind):
        when = sort_time(document.get("timestamp"))
        items.append({"kind": "record", "project": project or name, "label": document["label"],
                      "document": document, "created_at": when, "updated_at": when})
    return items


def _runs(items, kinds, skipped):
    """``(kind, items)`` in runs of one kind, at most a page each; items of a kind not in
    ``kinds`` are counted in ``skipped`` instead."""
    batch = []
    for item in items:
        if item["kind"] not in kinds:
            skipped[item["kind"]] = skipped.get(item["kind"], 0) + 1
            continue
        if batch and (batch[0]["kind"] != item["kind"] or len(batch) >= PAGE):
            yield batch[0]["kind"], batch
            batch = []
        batch.append(item)
    if batch:
        yield batch[0]["kind"], batch


SINGLE_RECORD_BYTES = 64 * 1024 * 1024  # a file this small that is one JSON object may be one record


def _refuse_a_single_record(path, start):
    """A file holding one Sumatra record (a JSON object with a label) is not an export: say which
    command takes it (``db record add``) instead of "no end line"."""
    if not start.lstrip().startswith(b"{") or b"balsamdb_export" in start.split(b"\n", 1)[0]:
        return
    try:
        if path.stat().st_size > SINGLE_RECORD_BYTES:
            return
        document = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return
    if isinstance(document, dict) and "label" in document:
        raise BadRequest(f"{shell_path(path)} holds one record, not an export: add it with "
                         f"db record add PROJECT {shell_path(path)}")


def import_file(path, dst, project=None, dry_run=False, progress=False):
    """Import an export file (balsamdb's, or the JSON of Sumatra's ``smt export``) into ``dst``.

    A balsamdb export is checked for its end line before anything is written, and
    after the import every item of the file is checked to be present and equal.
    Returns a report dict."""
    from ..sumatra_export import is_smt_export
    from ..sumatra_store import store_kind

    path = Path(path)
    store = store_kind(path)
    start = b""
    if store is None:
        try:
            with open(path, "rb") as handle:
                start = handle.read(4096)
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from None
    if store is not None:  # read once: the check below compares with the same records
        records = _sumatra_store_items(path, project, store)
        items, footer = records, None
        kind_of_file = "Sumatra record store (Django, SQLite)" if store == "django" else "Sumatra record store (shelve)"
    elif is_smt_export(start):
        items, kind_of_file, footer = _smt_items(path, project), "smt export", None
    else:
        _refuse_a_single_record(path, start)
        footer = read_footer(path)
        check_export(path, footer)
        items, kind_of_file = _export_items(path), "balsamdb export"
    started = time.monotonic()
    totals, skipped = {}, {}
    bar = Progress(progress, sum((footer or {}).get("counts", {}).values()) or None, "import")
    try:
        for kind, batch in _runs(items, dst.kinds, skipped):
            import_batch(dst, batch, dry_run, totals.setdefault(kind, {"added": 0, "updated": 0, "unchanged": 0}))
            bar.update(len(batch), f"{kind}s")
    finally:
        bar.close()
    report = {"file": str(path), "format": kind_of_file, "destination": dst.name, "dry_run": dry_run,
              "items": totals, "skipped_kinds": skipped}
    if not dry_run:
        # Check: the same items again, counted only: every one must now be present and equal.
        check = {}
        again = _export_items(path) if footer is not None else records if store else _smt_items(path, project)
        for _kind, batch in _runs(again, dst.kinds, {}):
            import_batch(dst, batch, True, check)
        if check.get("added") or check.get("updated"):
            raise TransferError(f"after the import, {check.get('added', 0)} items of {path} are missing from "
                                f"{dst.name} and {check.get('updated', 0)} differ (writers changing them?)")
        report["verified"] = True
    seconds = time.monotonic() - started
    report["seconds"] = round(seconds, 3)
    return report
