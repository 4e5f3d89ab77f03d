"""Copying one store into another, and verifying the copy (see :mod:`balsamdb.transfer`)."""

import time

from ..exceptions import BalsamDBError, TransferError
from ..operations.stores import KINDS, PLURALS, item_key
from ..wording import plural
from .bulk import ITEM_TABLES, arrivals_sql, bulk_pass, compare_sql, fast_path
from .paging import import_batch, pages

SLACK = 5.0          # seconds: a catch-up pass re-reads what changed this long before the previous one began
MAX_PASSES = 8       # catch-up passes before the copy reports the source as still changing
VERIFY_TRIES = 4

# -- copying -----------------------------------------------------------------------------------------------

class Progress:
    """A tqdm bar with counts and rate on a terminal; silent otherwise."""

    def __init__(self, enabled, total, description):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit=" items", dynamic_ncols=True, leave=True)

    def update(self, n, postfix=None):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _differences(src, dst, kinds):
    """The groups whose digests differ: ``[(group, what, source entry, destination entry)]``,
    group being ``("project", name)`` or ``(kind, None)``; only the kinds both stores hold."""
    out = []
    if "record" in kinds or "project" in kinds:
        for name in sorted(src["projects"]):
            a, b = src["projects"][name], dst["projects"].get(name)
            if a != b:
                out.append((("record", name), f"project {name!r}", a["records"], b["records"] if b else None))
    for kind in ("job", "user", "permission", "policy"):
        group = PLURALS[kind]
        if kind in kinds and src[group] != dst[group]:
            out.append(((kind, None), group, src[group]["count"], dst[group]["count"]))
    return out


def _compare_changed(src, dst, kinds, until):
    """(items of ``src`` changed after ``until``, how many of them differ in ``dst``)."""
    checked, counts = 0, {}
    for kind in ("record", "job"):
        if kind in kinds:
            for page in pages(src, kind, since=until):
                checked += len(page["items"])
                import_batch(dst, page["items"], True, counts)
    return checked, counts.get("added", 0) + counts.get("updated", 0)


def _contained(src, dst, group, until, changed):
    """True when every item of ``group`` in ``src`` (not changed after ``until``) is in ``dst``,
    equal: for a destination that holds more than the source (a copy into a store in use)."""
    kind, project = group
    changed = {tuple(key) for key in changed}
    after = [project, ""] if kind == "record" else None  # just before the project's first label
    for page in pages(src, kind, after=after):
        items = [i for i in page["items"] if (kind != "record" or i["project"] == project)
                 and not (kind in ("record", "job") and (i["updated_at"] > until or tuple(item_key(i)) in changed))]
        counts = import_batch(dst, items, True, {})
        if counts.get("added") or counts.get("updated"):
            return False
        if kind == "record" and page["items"] and page["items"][-1]["project"] != project:
            return True  # past the project's records
    return True


def copy_store(src, dst, dry_run=False, progress=False, log=None, stop=None):
    """Copy every item of store ``src`` to store ``dst`` (endpoints of :func:`open_store`).

    Returns a report dict: per-kind counts of the first pass, what arrived during
    the copy (catch-up passes), the verification (digests per project), and the
    rate.  Raises :class:`TransferError` when the copy cannot be verified.
    ``log(sentence)`` hears about each pass; ``stop`` (a threading.Event) ends it early.
    """
    say = log or (lambda sentence: None)
    versions_note = None
    carry = src.keeps_versions and dst.keeps_versions
    for end in (src, dst):
        end.versions = carry  # both sides are read alike, or their digests differ
    if src.keeps_versions and not dst.keeps_versions:
        versions_note = (f"{dst.name} keeps no record versions: the current version of each record is copied, "
                         "its earlier versions are not")
        say(versions_note)
    kinds = [k for k in KINDS if k in src.kinds and k in dst.kinds]
    skipped = [k for k in KINDS if k in src.kinds and k not in dst.kinds]
    started = time.monotonic()
    counts = src.counts()
    total = sum(counts.get(k, 0) for k in kinds)
    report = {"source": src.name, "destination": dst.name, "dry_run": dry_run, "kinds": kinds,
              "limits": [x for x in (src.limits, dst.limits) if x and skipped],
              "skipped_kinds": {k: counts.get(k, 0) for k in skipped}, "source_counts": counts,
              "first_pass": {}, "during_copy": {}, "passes": 0,
              "record_versions": "current only" if versions_note else "all"}
    if versions_note:
        report["limits"].append(versions_note)
    fast, why = fast_path(src, dst, dry_run)
    report["path"], report["path_reason"] = ("sqlite-bulk" if fast else "items"), why
    say(f"path: {report['path']} ({why})")
    bar = Progress(progress, total, "copy" if not dry_run else "dry run")
    try:
        if fast:
            pass_start, totals = _bulk_first_pass(src, dst, kinds, report, bar, stop, say)
        else:
            pass_start, totals = one_pass(src, dst, kinds, None, dry_run, bar, stop)
        report["first_pass"] = totals
        report["passes"] = 1
        first_seconds = time.monotonic() - started
        moved = sum(v["added"] + v["updated"] + v["unchanged"] for v in totals.values())
        report["first_pass_seconds"] = round(first_seconds, 3)
        report["first_pass_items_per_second"] = round(moved / first_seconds, 1) if first_seconds > 0 else None
    finally:
        bar.close()
    say(f"pass 1: {_summary(report['first_pass'])}")
    if dry_run:
        report["seconds"] = round(time.monotonic() - started, 3)
        return report
    copy_began = pass_start
    for number in range(2, MAX_PASSES + 2):
        next_start, totals = one_pass(src, dst, kinds, pass_start - SLACK, dry_run, None, stop)
        report["passes"] = number
        moved = {k: v["added"] + v["updated"] for k, v in totals.items() if k in ("record", "job")}
        say(f"pass {number} (catching up with writes since the previous pass): {_summary(totals)}")
        pass_start = next_start
        if not any(moved.values()):
            break
    check = verify_sql if report["path"] == "sqlite-bulk" else verify
    report["verification"] = check(src, dst, kinds, pass_start, say)
    arrivals = arrivals_sql if report["path"] == "sqlite-bulk" else _arrivals
    report["during_copy"] = arrivals(src, kinds, copy_began)
    seconds = time.monotonic() - started
    report["seconds"] = round(seconds, 3)
    copied = sum(v["added"] + v["updated"] + v["unchanged"] for v in report["first_pass"].values())
    report["items_per_second"] = round(copied / seconds, 1) if seconds > 0 else None
    return report


def _bulk_first_pass(src, dst, kinds, report, bar, stop, say):
    """Pass 1 of the fast path (:mod:`.bulk`); where the destination's server refuses it, the
    general path's pass 1 (which completes a partial bulk copy: every write is idempotent)."""
    began = src.export(KINDS[0], limit=1)["now"]  # the source's clock, as a page of the general path gives it
    try:
        rows, longest = bulk_pass(src, dst, bar, stop)
    except TransferError:
        raise
    except BalsamDBError as exc:
        report["path"], report["path_reason"] = "items", f"the fast path was refused ({exc}); the general path ran"
        say(f"path: items ({report['path_reason']})")
        return one_pass(src, dst, kinds, None, False, bar, stop)
    report["bulk_rows"], report["bulk_longest_chunk_seconds"] = rows, round(longest, 3)
    return began, {k: {"added": rows.get(ITEM_TABLES[k], 0), "updated": 0, "unchanged": 0} for k in kinds}


def _arrivals(src, kinds, began):
    """Records and jobs the source gained (``added``) or changed (``updated``) since ``began``
    (its clock when the copy began): what arrived while the copy ran, whichever pass took it."""
    out = {}
    for kind in ("record", "job"):
        if kind not in kinds:
            continue
        counts = {"added": 0, "updated": 0}
        for page in pages(src, kind, since=began):
            for item in page["items"]:
                counts["added" if item["created_at"] >= began else "updated"] += 1
        if counts["added"] or counts["updated"]:
            out[kind] = counts
    return out


def _summary(totals):
    parts = [f"{k}s +{v['added']} ~{v['updated']} ={v['unchanged']}" for k, v in totals.items()
             if v["added"] or v["updated"] or v["unchanged"]]
    return ", ".join(parts) or "nothing"


def one_pass(src, dst, kinds, since, dry_run, bar, stop):
    """Copy every item of ``kinds`` (changed since ``since``, for records and jobs);
    returns (the source's clock when the pass began, per-kind counts)."""
    began = None
    totals = {}
    for kind in kinds:
        counts = totals.setdefault(kind, {"added": 0, "updated": 0, "unchanged": 0})
        for page in pages(src, kind, since=since if kind in ("record", "job") else None):
            if stop is not None and stop.is_set():
                raise TransferError("the copy was interrupted; run it again to finish (nothing is copied twice)")
            began = page["now"] if began is None else began
            import_batch(dst, page["items"], dry_run, counts)
            if bar is not None and page["items"]:
                bar.update(len(page["items"]), f"{kind}s")
    return began if began is not None else time.time(), totals


def verify(src, dst, kinds, until, say=lambda s: None):
    """Compare counts and digests of ``src`` and ``dst`` up to the source's clock
    ``until``; items that changed after it are left out on both sides (and caught
    up first).  Where the destination holds more than the source (it was in use),
    each item of the source is checked to be there, equal.  Returns the
    verification report; raises :class:`TransferError`."""
    for attempt in range(1, VERIFY_TRIES + 1):
        source = src.digest(until=until)
        if source.get("too_many_changed"):
            raise TransferError("the source changes too fast to verify the copy (more than 50000 items changed "
                                "during it); run db copy again when fewer writers are busy")
        destination = dst.digest(until=until, exclude=source["changed_after"])
        problems, extra = [], []
        for group, what, count, other in _differences(source, destination, kinds):
            if other is not None and other > count and _contained(src, dst, group, until, source["changed_after"]):
                extra.append(f"{what}: the destination holds {other - count} more")
            else:
                problems.append(f"{what}: source {count}, destination {other if other is not None else 'none'}"
                                + (" with different content" if other == count else ""))
        if not problems:
            # The items left out of the digests (changed after ``until``, or stamped in the future by a
            # skewed clock) are compared one by one: only those that differ are still changing.
            checked, changing = _compare_changed(src, dst, kinds, until)
            say(f"verified: {plural(len(source['projects']), 'project')}, {plural(source['jobs']['count'], 'job')}, "
                f"{plural(source['users']['count'], 'user')}; {plural(checked, 'item')} that changed after the check began "
                f"compared one by one, {changing} of them still changing"
                + (f"; {'; '.join(extra)}" if extra else ""))
            return {"verified": True, "until": until, "compared_one_by_one": checked, "left_out_changing": changing,
                    "destination_holds_more": extra, "projects": source["projects"], "jobs": source["jobs"],
                    "users": source["users"], "permissions": source["permissions"],
                    "policies": source["policies"]}
        say(f"check {attempt}: {'; '.join(problems[:5])}: catching up again")
        if attempt == VERIFY_TRIES:
            raise TransferError("the copy differs from its source: " + "; ".join(problems[:10]) +
                                ". Run db copy again (it copies only what is missing)")
        next_until, _totals = one_pass(src, dst, kinds, until - SLACK, False, None, None)
        until = next_until


def verify_sql(src, dst, kinds, until, say=lambda s: None):
    """:func:`verify` for the fast path: the two SQLite files compared in SQL (:func:`.bulk.compare_sql`)
    instead of digests computed here; the same report, with ``"method": "sql"``, the rows
    compared per table, and ``null`` digests."""
    for attempt in range(1, VERIFY_TRIES + 1):
        problems, extra, summary = compare_sql(src, dst, until)
        if not problems:
            checked, changing = _compare_changed(src, dst, kinds, until)
            say(f"verified in SQL: {plural(len(summary['projects']), 'project')}, "
                f"{plural(summary['jobs']['count'], 'job')}, {plural(summary['users']['count'], 'user')}, "
                f"{plural(sum(summary['tables'].values()), 'row')} equal on both sides; {plural(checked, 'item')} "
                f"that changed after the check began compared one by one, {changing} of them still changing"
                + (f"; {'; '.join(extra)}" if extra else ""))
            return {"verified": True, "method": "sql", "until": until, "compared_one_by_one": checked,
                    "left_out_changing": changing, "destination_holds_more": extra, **summary}
        say(f"check {attempt}: {'; '.join(problems[:5])}: catching up again")
        if attempt == VERIFY_TRIES:
            raise TransferError("the copy differs from its source: " + "; ".join(problems[:10]) +
                                ". Run db copy again (it copies only what is missing)")
        until, _totals = one_pass(src, dst, kinds, until - SLACK, False, None, None)
