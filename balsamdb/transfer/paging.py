"""A store read page by page and written in requests bounded in bytes, the same for every endpoint:
:func:`pages` (one kind, in key order), :func:`digest_pages` (a store's digest from its pages) and
:func:`import_batch` (items imported in chunks of at most :data:`MAX_CHUNK_BYTES`)."""

import time

from ..operations.store_lines import LINE_KINDS
from ..operations.digests import Digester, digest_of
from ..operations.stores import canonical
from .line_reads import digest_lines

PAGE = 1000  # items per page read with export_items (a reader of this process reads READER_PAGE: endpoints.py)


def digest_pages(store, until=None, exclude=None):
    """What the ``store_digest`` operation computes, from ``export_items`` pages read
    here: no request has to digest a whole large store inside the write server.  Records and
    jobs of a store read on this process's own connection are digested from the canonical text
    of their rows (``line_pages`` of :class:`.endpoints.OperationStore`, as ``db export`` does),
    not from items."""
    now = time.time()
    excluded = {tuple(k) for k in exclude or ()}
    line_pages = getattr(store, "line_pages", None)
    by_lines = {kind: line_pages(kind) for kind in LINE_KINDS if kind in store.kinds and line_pages is not None}
    items = (item for kind in store.kinds if by_lines.get(kind) is None
             for page in pages(store, kind) for item in page["items"])
    digester, changed = Digester(), []
    for kind in LINE_KINDS:
        digest_lines(by_lines.get(kind) or (), until, excluded, digester, changed)
    return digest_of(items, until, excluded, now=now, digester=digester, changed=changed)


def pages(store, kind, since=None, after=None):
    """The pages of ``kind`` in ``store``, in key order (records and jobs changed since
    ``since``), starting after key ``after``."""
    while True:
        page = store.export(kind, after, PAGE, since)
        yield page
        after = page["next"]
        if after is None:
            return


MAX_CHUNK_BYTES = 8 * 1024 * 1024  # one import request stays well below max_request_bytes (64 MiB)


def by_size(items):
    """``items`` in runs of at most MAX_CHUNK_BYTES of JSON (one item may be larger alone)."""
    chunk, size = [], 0
    for item in items:
        length = len(canonical(item))
        if chunk and size + length > MAX_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += length
    if chunk:
        yield chunk


def import_batch(dst, items, dry_run, counts):
    """Import ``items`` into ``dst`` in requests bounded in bytes; adds the outcomes
    (added, updated, unchanged) to ``counts`` and returns it."""
    for chunk in by_size(items):
        for key, value in dst.import_(chunk, dry_run=dry_run).items():
            counts[key] = counts.get(key, 0) + value
    return counts
