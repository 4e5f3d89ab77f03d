"""Moving stores: ``db copy``, ``db configure --store``, ``db export`` and ``db import``.

A store is named by a DB directory path, a ``postgresql://`` URL, or an
``http(s)://`` URL (balsamdb's own HTTP store, or any server of the Sumatra
Server API).  :func:`open_store` turns the name into an endpoint with four
methods: ``counts()``, ``export(kind, after, limit, since)``, ``import_(items,
dry_run)`` and ``digest(until, exclude)``, built on the operations of
:mod:`balsamdb.operations.stores` (a plain Sumatra server gets the same methods from
its HTTP API, for projects and records only).

:func:`copy_store` copies every item (pass 1), then catches up with what
writers changed meanwhile (passes 2.. over items changed since the previous pass
began, until one finds nothing new), then verifies by comparing the per-project
counts and digests of both stores up to one moment of the source's clock.  Every
write is idempotent, so a copy that was killed is simply run again.

A SQLite DB directory copied into a new (empty) one takes a fast path (:mod:`.bulk`): the
destination's write server copies the rows in SQL, and the verification compares both files
in SQL; the report's ``path`` says which path ran, and why.

Modules: :mod:`.endpoints` (opening a store; balsamdb's own stores), :mod:`.sumatra_endpoints` (Sumatra's
stores), :mod:`.paging` (pages, digests, bounded imports), :mod:`.line_reads` (records and jobs
read as export lines), :mod:`.copying` (copy and verify), :mod:`.bulk` (the
fast path), :mod:`.files` (export files), :mod:`.configure` (``configure_store``).
"""

from . import bulk, copying
from .configure import configure_store, copy_applied_requests
from .copying import MAX_PASSES, SLACK, VERIFY_TRIES, Progress, copy_store, verify
from .endpoints import OperationStore, SQLDatabase, open_store, sqlite_file_store
from .files import EXPORT_FORMAT, check_export, export_file, export_store, import_file, read_footer
from .paging import MAX_CHUNK_BYTES, PAGE, digest_pages
from .sumatra_endpoints import SumatraDjangoStore, SumatraStore

__all__ = ["EXPORT_FORMAT", "MAX_CHUNK_BYTES", "MAX_PASSES", "PAGE", "SLACK", "VERIFY_TRIES", "OperationStore",
           "Progress", "SQLDatabase", "SumatraDjangoStore", "SumatraStore", "check_export", "configure_store",
           "bulk", "copy_applied_requests", "copy_store", "copying", "digest_pages", "export_file", "export_store", "import_file", "open_store",
           "read_footer", "sqlite_file_store", "verify"]
