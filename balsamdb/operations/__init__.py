"""The closed set of operations that change or read the store.

Each operation is defined once, in one of the modules below, and its docstring
is its specification: the same function runs inside the write server (in a
savepoint of a group commit) and in a process writing SQLite directly.
Parameters arrive as JSON values and are validated (:mod:`.checks`) before
anything is written; no SQL crosses the wire.

- :mod:`.registry`: :data:`OPERATIONS`, :func:`operation`, :func:`lookup`, :func:`bind_params`
- :mod:`.checks`: validators of parameters
- :mod:`.jobs` (with :mod:`.parents`: dependencies), :mod:`.leases` (claims of launchers, lost runs),
  :mod:`.records` (and projects), :mod:`.users` (and permissions)
- :mod:`.stores` (export of a whole store), :mod:`.digests` (its digest), :mod:`.store_import` (``import_items``),
  :mod:`.store_bulk` (``bulk_copy``: SQLite rows copied in SQL, the fast path of ``db copy``),
  :mod:`.store_lines` (an export file's lines of records and jobs, made from rows)

:mod:`balsamdb.applier` runs them (``lookup``, ``bind_params``, then the
function) while the models are bound to a database and a transaction is open.
"""

# The modules that register operations, imported in the order the operations are listed.
from . import (jobs, leases, records, record_links, pages, users, stores, digests, store_import, store_bulk, upkeep,
               server)
from .checks import (INT_MAX, MAX_LIST, check_flag, check_number, check_object, check_project_name,
                     check_saved_by, check_str_list, check_text, check_user_name, check_uuid, chunks)
from ..job_fields import CREATE_ONLY, JOB_KEYS
from .job_specs import JOB_FIELDS, clean_job, job_to_dict
from .jobs import FILTER_KEYS, job_query
from .records import (RECORD_MUTABLE, TAG_MATCHES, compress, decompress, project_to_dict, record_columns,
                      record_tags, record_text, sort_time, version_list)
from .registry import OPERATIONS, Operation, bind_params, lookup, operation

#: The operations the write server answers itself (ping, status, spool_drain).
SERVER_OPS = frozenset(name for name, op in OPERATIONS.items() if op.server)
from .digests import Digester, digest_of
from .stores import KINDS, canonical, item_key


__all__ = [
    "CREATE_ONLY",
    "Digester",
    "FILTER_KEYS",
    "INT_MAX",
    "JOB_FIELDS",
    "JOB_KEYS",
    "KINDS",
    "MAX_LIST",
    "OPERATIONS",
    "Operation",
    "RECORD_MUTABLE",
    "SERVER_OPS",
    "TAG_MATCHES",
    "bind_params",
    "canonical",
    "check_flag",
    "check_number",
    "check_object",
    "check_project_name",
    "check_saved_by",
    "check_str_list",
    "check_text",
    "check_user_name",
    "check_uuid",
    "chunks",
    "clean_job",
    "compress",
    "decompress",
    "digest_of",
    "item_key",
    "job_query",
    "job_to_dict",
    "jobs",
    "leases",
    "lookup",
    "operation",
    "pages",
    "project_to_dict",
    "record_columns",
    "record_tags",
    "record_text",
    "record_links",
    "records",
    "server",
    "sort_time",
    "store_bulk",
    "store_import",
    "stores",
    "users",
    "version_list",
]

