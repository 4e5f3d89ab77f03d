"""Records and jobs read on this process's own connection as the lines of an export file
(:mod:`balsamdb.operations.store_lines`): the next page's rows read on a thread while a page's
lines are made, and the digests of a verification fed from the lines instead of items."""

from concurrent.futures import ThreadPoolExecutor

from ..operations.store_lines import page_lines, page_rows


def read_ahead(local, kind, versions, limit):
    """The pages of ``kind`` (record or job) as :func:`.store_lines.export_lines` gives them,
    ``limit`` lines a page, read with ``local.read`` (a :class:`.endpoints.SQLDatabase`): page
    ``n + 1``'s rows are read on one thread, in turn on ``local``'s connection (only that thread
    uses it meanwhile), while page ``n``'s lines are made here, so that the database (PostgreSQL's
    backend, SQLite's B-tree walk) works on the other core meanwhile."""

    def read(after):
        return local.read(page_rows, kind=kind, after=after, limit=limit, versions=versions)

    with ThreadPoolExecutor(1, thread_name_prefix="export-read-ahead") as pool:
        pending = pool.submit(read, None)
        while pending is not None:
            rows = pending.result()
            pending = None if rows["next"] is None else pool.submit(read, rows["next"])
            yield page_lines(rows)


def digest_lines(pages, until, excluded, digester, changed):
    """Feed ``digester`` (a :class:`.digests.Digester`) the lines of ``pages`` (of
    :func:`read_ahead`) as :func:`.digests.digest_of` feeds it items: a line whose item changed after
    ``until`` goes into ``changed`` (its key, as a list) instead; one whose key is in ``excluded``
    (tuples) is left out."""
    for page in pages:
        for (line, group, content), key, updated_at in zip(page["lines"], page["keys"], page["updated_at"]):
            if until is not None and updated_at > until:
                changed.append(list(key))
            elif key not in excluded:
                digester.add_content(group, (line if content is None else content).encode())
