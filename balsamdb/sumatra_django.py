"""Sumatra's Django record store read with plain SQL: no Django, no Sumatra needed.

``smt`` keeps its records through Django (``.smt/records``, a SQLite file, by default; or a
PostgreSQL database with ``smt init --store=postgres://...``).  The tables are those of
``sumatra/recordstore/django_store/models.py``: ``django_store_project``, ``django_store_record``
(one row per record, with foreign keys to ``executable``, ``repository``, ``parameterset``,
``launchmode``, ``datastore`` twice (output and input) and ``project``), the many-to-many tables
``record_input_data``, ``record_dependencies`` and ``record_platforms``, ``datakey`` (input data
through ``record_input_data``, output data by ``output_from_record_id``), and the tags of
Sumatra's copy of django-tagging (``django_store_tag`` and ``django_store_taggeditem``, whose
``content_type_id`` names ``django_store.record`` in ``django_content_type``; before Sumatra 0.8
the tables of the django-tagging app, ``tagging_tag`` and ``tagging_taggeditem``).

Each record comes out as the JSON document that ``smt`` sends to an HTTP store for it
(``sumatra.formatting.record2dict``): the same keys in the same order, the stored values, times
in UTC as ``%Y-%m-%d %H:%M:%S+0000``.  Columns that older Sumatra versions lack get the values
that Sumatra's own reader gives them.  All tables are read in one read transaction, so the records
are one consistent state of the store even while ``smt`` writes to it; the store is never written.
"""

import ast
import json
import os
import sqlite3
from datetime import datetime, timezone

from .exceptions import TransferError, database_busy

TIME_FORMAT = "%Y-%m-%d %H:%M:%S%z"
LOCK_WAIT = float(os.environ.get("BALSAMDB_SUMATRA_LOCK_WAIT", "60"))  # seconds a locked SQLite store is waited for
NEEDED = {"django_store_project": {"id", "description"},
          "django_store_record": {"label", "db_id", "project_id", "timestamp"}}
PARAMETER_TYPES = {"ConfigParserParameterSet", "JSONParameterSet", "NTParameterSet", "SimpleParameterSet",
                   "YAMLParameterSet"}


class Tables:
    """The tables of one store, read in one transaction: ``columns[table]`` and ``rows(table)``."""

    def __init__(self, columns, fetch):
        self.columns, self._fetch = columns, fetch

    def rows(self, table, order=None):
        """Every row of ``table`` as a dict ([] when the store has no such table)."""
        if table not in self.columns:
            return []
        return self._fetch(f'SELECT * FROM "{table}"' + (f" ORDER BY {order}" if order else ""))

    def by_id(self, table, key="id"):
        return {row[key]: row for row in self.rows(table)}


def _utc(value):
    """A stored time as Sumatra prints it (UTC; SQLite holds naive UTC text, PostgreSQL timestamptz)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if not isinstance(value, datetime):
        raise ValueError(f"the time {value!r} is not a time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime(TIME_FORMAT)


def _literal(text, what):
    """A dict that Sumatra stored as its repr (``str(obj.__getstate__())``), read without eval."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):  # a crafted store: too deep, not text
        raise TransferError(f"cannot read the stored {what} {str(text)[:80]!r}") from None
    return value


def _metadata(text):
    try:
        return json.loads(text) if text else {}
    except ValueError:  # before JSON, Sumatra stored the repr of a dict
        return _literal(text, "data key metadata")


def _parameters(row):
    """As Sumatra's ``ParameterSet.to_sumatra`` then ``record2dict`` give them."""
    if row is None:
        return None
    if row["type"] in PARAMETER_TYPES:
        return {"content": row["content"], "type": row["type"]}
    if row["content"] == "None":
        return {"content": "None", "type": "NoneType"}
    if row["content"] == "{}":
        return {"content": "{}", "type": "dict"}
    return {"content": row["content"], "type": "str"}


def _state(row, what):
    return None if row is None else {"type": row["type"], "parameters": _literal(row["parameters"], what)}


def _key(row):
    return {"path": row["path"], "digest": row["digest"], "metadata": _metadata(row.get("metadata")),
            "creation": _utc(row.get("creation"))}


def _tags(tables):
    """{record db_id: sorted tag names} from the tag tables (or, lacking them, the tags column)."""
    for tag_table, item_table in (("django_store_tag", "django_store_taggeditem"),
                                  ("tagging_tag", "tagging_taggeditem")):
        if tag_table in tables.columns and item_table in tables.columns:
            types = [row["id"] for row in tables.rows("django_content_type")
                     if row["app_label"] == "django_store" and row["model"] == "record"]
            names = {row["id"]: row["name"] for row in tables.rows(tag_table)}
            tags = {}
            for item in tables.rows(item_table):
                if item["content_type_id"] in types and item["tag_id"] in names:
                    tags.setdefault(item["object_id"], set()).add(names[item["tag_id"]])
            return {key: sorted(value) for key, value in tags.items()}
    tags = {}
    for row in tables.rows("django_store_record"):
        text = row.get("tags") or ""
        separator = "," if "," in text else None  # as django-tagging's parse_tag_input
        tags[row["db_id"]] = sorted({t.strip() for t in text.split(separator) if t.strip()})
    return tags


def _links(tables, table, column):
    """{record db_id: [ids of ``column``]} of a many-to-many table, in id order."""
    links = {}
    for row in tables.rows(table, order="id"):
        links.setdefault(row["record_id"], []).append(row[column])
    return links


# What a damaged or crafted store makes the reading below raise (a missing column, a value of
# another type, a time that is no time, a value nested too deeply): one line, nothing imported.
BAD_STORE = (KeyError, TypeError, ValueError, AttributeError, RecursionError, MemoryError)


def _what_is_wrong(exc):
    if isinstance(exc, KeyError):
        return f"a column {exc.args[0]!r} is missing"
    if isinstance(exc, (RecursionError, MemoryError)):
        return "a value is nested too deeply or is too large to read"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_tables(tables, name="the store"):
    """``(projects, records)``: ``[{"name", "description"}]`` of every project and
    ``[(project, document)]`` of every record, from the tables of a Sumatra Django store.
    A store that cannot be read so (a damaged or crafted one) is a TransferError naming the
    table or record: nothing is read from it."""
    try:
        return _read_tables(tables)
    except TransferError as exc:
        raise TransferError(f"cannot read {name}: {exc}; nothing was imported") from None
    except BAD_STORE as exc:
        raise TransferError(f"cannot read {name} as Sumatra's Django record store: {_what_is_wrong(exc)}; "
                            "nothing was imported") from None


def _read_tables(tables):
    for table, needed in NEEDED.items():
        missing = needed - tables.columns.get(table, set())
        if missing:
            raise TransferError(f"not Sumatra's Django record store: table {table} lacks {', '.join(sorted(missing))}")
    projects = [{"name": row["id"], "description": row["description"] or ""}
                for row in tables.rows("django_store_project", order="id")]
    executables = tables.by_id("django_store_executable")
    repositories = tables.by_id("django_store_repository")
    parameter_sets = tables.by_id("django_store_parameterset")
    launch_modes = tables.by_id("django_store_launchmode")
    datastores = tables.by_id("django_store_datastore")
    keys = tables.rows("django_store_datakey", order="path, id")  # DataKey orders by path
    keys_by_id = {row["id"]: row for row in keys}
    outputs = {}
    for row in keys:
        outputs.setdefault(row.get("output_from_record_id"), []).append(row)
    dependencies = tables.by_id("django_store_dependency")
    platforms = tables.by_id("django_store_platforminformation")
    inputs = _links(tables, "django_store_record_input_data", "datakey_id")
    needs = _links(tables, "django_store_record_dependencies", "dependency_id")
    runs_on = _links(tables, "django_store_record_platforms", "platforminformation_id")
    tags = _tags(tables)
    records = []
    for row in tables.rows("django_store_record", order="project_id, label, db_id"):
        try:
            records.append((row["project_id"], _document(row, tags, executables, repositories, parameter_sets,
                                                         launch_modes, datastores, keys_by_id, inputs, outputs,
                                                         dependencies, needs, platforms, runs_on)))
        except BAD_STORE as exc:
            raise TransferError(f"record {row['label']!r} (db_id {row['db_id']}): {_what_is_wrong(exc)}") from None
        except TransferError as exc:
            raise TransferError(f"record {row['label']!r} (db_id {row['db_id']}): {exc}") from None
    return projects, records


def _document(row, tags, executables, repositories, parameter_sets, launch_modes, datastores, keys_by_id, inputs,
              outputs, dependencies, needs, platforms, runs_on):
    """One record of the store as the document ``smt`` sends for it."""
    if not isinstance(row["label"], str) or not row["label"]:
        raise TransferError("its label is not a non-empty text")
    rid = row["db_id"]
    executable = executables.get(row.get("executable_id"))
    repository = repositories.get(row.get("repository_id"))
    input_keys = sorted((keys_by_id[k] for k in inputs.get(rid, []) if k in keys_by_id),
                        key=lambda k: (k["path"], k["id"]))
    document = {
        "label": row["label"],
        "timestamp": _utc(row["timestamp"]),
        "reason": row.get("reason", ""),
        "duration": row.get("duration"),
        "executable": None if executable is None else {
            "path": executable["path"], "version": executable["version"], "name": executable["name"],
            "options": executable.get("options", "")},
        "repository": None if repository is None else {
            "url": repository["url"], "type": repository["type"], "upstream": repository.get("upstream")},
        "main_file": row.get("main_file", ""),
        "version": row.get("version", ""),
        "parameters": _parameters(parameter_sets.get(row.get("parameters_id"))),
        "input_data": [_key(k) for k in input_keys],
        "script_arguments": row.get("script_arguments", ""),
        "launch_mode": _state(launch_modes.get(row.get("launch_mode_id")), "launch mode"),
        "datastore": _state(datastores.get(row.get("datastore_id")), "data store"),
        "input_datastore": _state(datastores.get(row.get("input_datastore_id")), "input data store")
        if "input_datastore_id" in row else {"type": "FileSystemDataStore", "parameters": {"root": "/"}},
        "outcome": row.get("outcome") or "",
        "stdout_stderr": row.get("stdout_stderr", ""),
        "output_data": [_key(k) for k in outputs.get(rid, [])],
        "tags": tags.get(rid, []),
        "diff": row.get("diff", ""),
        "user": row.get("user", ""),
        "dependencies": [{"path": d["path"], "version": d["version"], "name": d["name"], "module": d["module"],
                          "diff": d["diff"], "source": d.get("source")}
                         for d in sorted((dependencies[i] for i in needs.get(rid, []) if i in dependencies),
                                         key=lambda d: (d["name"], d["id"]))],
        "platforms": [{"system_name": p["system_name"], "ip_addr": p["ip_addr"],
                       "architecture_bits": p["architecture_bits"], "machine": p["machine"],
                       "architecture_linkage": p["architecture_linkage"], "version": p["version"],
                       "release": p["release"], "network_name": p["network_name"], "processor": p["processor"]}
                      for p in sorted((platforms[i] for i in runs_on.get(rid, []) if i in platforms),
                                      key=lambda p: p["id"])],
        "repeats": row.get("repeats"),
    }
    return document


def _dict_rows(cursor, sql):
    cursor.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def sqlite_tables(con):
    columns = {}
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        columns[name] = {row[1] for row in con.execute(f'PRAGMA table_info("{name}")')}
    return columns


def locked(path, wait):
    """The error for a SQLite store whose write lock outlasted the wait."""
    return TransferError(f"cannot read {path}: it stayed locked by a writer (a running smt?) for {wait:g} s; "
                         "try again when it is done (BALSAMDB_SUMATRA_LOCK_WAIT sets the wait)")


def read_sqlite(path, wait=None):
    """``(projects, records)`` of Sumatra's Django store in the SQLite file ``path``.

    Read in one read transaction: a write of a running ``smt`` is waited for (``wait``
    seconds, BALSAMDB_SUMATRA_LOCK_WAIT, default 60), then the store is read as it is after it;
    a lock held longer is a clear error."""
    wait = LOCK_WAIT if wait is None else wait
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=wait, isolation_level=None)
    except sqlite3.Error as exc:
        raise TransferError(f"cannot read {path}: {exc}") from None
    try:
        con.execute("BEGIN")
        cursor = con.cursor()
        tables = Tables(sqlite_tables(con), lambda sql: _dict_rows(cursor, sql))
        return read_tables(tables, path)
    except sqlite3.OperationalError as exc:
        if database_busy(exc):
            raise locked(path, wait) from None
        raise TransferError(f"cannot read {path}: {exc}") from None
    except sqlite3.Error as exc:
        raise TransferError(f"cannot read {path}: {exc}") from None
    finally:
        con.close()


def read_postgres(params, name):
    """``(projects, records)`` of Sumatra's Django store in the PostgreSQL database that the
    psycopg2 connection ``params`` name, read in one REPEATABLE READ, READ ONLY transaction."""
    import psycopg2

    try:
        con = psycopg2.connect(connect_timeout=5, **params)
    except psycopg2.Error as exc:
        raise TransferError(f"cannot connect to {name}: {str(exc).strip()}") from None
    try:
        con.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with con.cursor() as cursor:
            cursor.execute("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema = current_schema()")
            columns = {}
            for table, column in cursor.fetchall():
                columns.setdefault(table, set()).add(column)
            return read_tables(Tables(columns, lambda sql: _dict_rows(cursor, sql)), name)
    except psycopg2.Error as exc:
        raise TransferError(f"cannot read {name}: {str(exc).strip()}") from None
    finally:
        con.close()
