"""The records list of ``db serve`` in every sortable order, read in-process on a DB directory: the first page,
the next page (by its ``?after=`` key), the page before (``?before=``), an old ``?page=N`` link and the last
page (``?last=1``: the reverse order's first page, turned round), each with and without a tag
filter.  Prints wall and CPU ms per read (median of ``--repeat``) and whether the plan sorts the rows
(``TEMP B-TREE`` on SQLite, a ``Sort`` node on PostgreSQL; an ``Incremental Sort`` on an index's order is not one).

    python scripts/bench_record_sorts.py --dbdir D [--project P] [--repeat 3] [--tags gpu] [--page 2000]
        [--skip REGEX] [--postgres-port PORT]

Each read is what the page's one query costs (``record_pages.find_records``), without HTTP or HTML.
"""

import argparse
import re
import statistics
import time

from balsamdb.dbdir import DBDirectory
from balsamdb.models import MODELS, Record
from balsamdb.server.http import keyset, record_pages
from balsamdb.settings import load_settings


def timed(function, repeat):
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = function()
        cpus.append((time.thread_time() - cpu) * 1000)
        walls.append((time.perf_counter() - wall) * 1000)
    return statistics.median(walls), statistics.median(cpus), result


def plan_sorts(database, project, sort, tags):
    """Whether the first page's query sorts its rows (no index gives the order)."""
    order = record_pages._order(sort)
    query = Record.select(Record.id).where(Record.project == project)
    if tags:
        from balsamdb.models import RecordTag
        import peewee as pw
        tagged = RecordTag.select(RecordTag.record).where(RecordTag.tag.in_(list(tags)))
        query = query.where(pw.fn.EXISTS(tagged.where(RecordTag.record == Record.id)))
    sql, params = query.order_by(*order.order_by()).limit(record_pages.PER_PAGE + 1).sql()
    if isinstance(database, __import__("peewee").PostgresqlDatabase):
        lines = [r[0] for r in database.execute_sql("EXPLAIN " + sql, params)]
        # "Incremental Sort" (label: unique in its project, ordered by the index) sorts no more than a row a label
        return any(re.search(r"\bSort\b", line) and not re.search("Incremental|Sort Key|Presorted", line)
                   for line in lines), lines
    lines = [r[-1] for r in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params)]
    return any("TEMP B-TREE" in line for line in lines), lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dbdir", required=True)
    parser.add_argument("--project", default="P")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tags", default="gpu", help="the tag filter of the tagged rows ('' for none)")
    parser.add_argument("--page", type=int, default=2000, help="the old ?page=N link read")
    parser.add_argument("--skip", help="skip the sorts matching this regex")
    parser.add_argument("--postgres-port", type=int)
    parser.add_argument("--plans", action="store_true", help="print each first page's plan")
    parser.add_argument("--whole-text", action="store_true",
                        help="sort the long text columns whole, as before schema 12 (the 'before' numbers)")
    args = parser.parse_args()
    if args.whole_text:
        from balsamdb import schema_records_sort
        schema_records_sort.sort_key = lambda field: field
    database = DBDirectory(args.dbdir).open_database(load_settings(), postgres_port=args.postgres_port)
    database.connect()
    sorts = [""] + [f"{sign}{name}" for name in record_pages.SORTABLE for sign in ("", "-")]
    filters = [()] + ([tuple(args.tags.split(","))] if args.tags else [])
    print(f"{'sort':12} {'tags':5} {'sorts?':6} {'first':>13} {'next':>13} {'before':>13} "
          f"{'?page=' + str(args.page):>13} {'last':>13}   (wall / CPU ms)")
    with database.bind_ctx(MODELS):
        for tags in filters:
            for sort in sorts:
                if args.skip and re.search(args.skip, sort or "default"):
                    continue
                sorting, lines = plan_sorts(database, args.project, sort, tags)

                def page(at, sort=sort, tags=tags):
                    return record_pages.find_records(database, args.project, "", tags, sort, at)

                cells = []
                wall, cpu, first = timed(lambda: page({"page": 1}), args.repeat)
                cells.append((wall, cpu))
                after = keyset.decode(first["next"], int) if first["next"] else None
                wall, cpu, second = timed(lambda: page({"after": after, "at": None}), args.repeat)
                cells.append((wall, cpu))
                before = keyset.decode(second["previous"], int) if second["previous"] else None
                wall, cpu, back = timed(lambda: page({"before": before, "at": None}), args.repeat)
                assert [r["label"] for r in back["rows"]] == [r["label"] for r in first["rows"]], sort
                cells.append((wall, cpu))
                cells.append(timed(lambda: page({"page": args.page}), args.repeat)[:2])
                cells.append(timed(lambda: page({"last": True}), args.repeat)[:2])
                print(f"{sort or 'default':12} {','.join(tags) or '-':5} {'SORT' if sorting else 'index':6} "
                      + " ".join(f"{w:7.1f}/{c:5.1f}" for w, c in cells), flush=True)
                if args.plans:
                    print("    " + " | ".join(lines))
    database.close()


if __name__ == "__main__":
    main()
