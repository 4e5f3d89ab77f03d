"""The stored answers of applied writes, kept small.

A retry of an applied write gets its original answer from the record of applied
requests (see :mod:`balsamdb.applier`).  Most writes answer with a whole job (with its
``data``, often kilobytes), and the record is kept for days: storing each answer whole
cost more than the jobs themselves.  So a job answer is stored as what a later reader
cannot know from the job's row::

    {"job": id, "state": ..., "state_message": ..., "updated_at": ..., "rest": digest}

(plus ``"exact"``: values whose JSON differs from what the row gives back, such as
``0`` kept as ``0.0``).  Every other field is the job row's, and ``rest`` (a SHA-256 of
those fields) proves that the row still holds them.  Before a write changes those
fields or deletes the job (``job_modify``, ``job_delete``, ``import_items``), the old
fields are kept once in the ``job_answer_base`` table under their digest, for the
retention period of the record: a replay of an older write finds them there.  The
rebuilt answer is the original, byte for byte.  Every other answer is stored as its
JSON text, as before.
"""

import hashlib
import math
import time
import uuid

import peewee as pw

from . import jsonio
from .exceptions import ServerError
from .job_fields import JOB_KEYS
from .models import AppliedRequest, Job, JobAnswerBase, quoter

# Which operations answer with a job, and which change the jobs such answers refer to, are fields
# of each registered operation (``answer="job"``, ``changes_jobs``: see balsamdb.operations.registry).

#: Fields of a job answer stored in the record itself: what a state change sets.
OWN_KEYS = ("state", "state_message", "updated_at")
REST_KEYS = tuple(k for k in JOB_KEYS if k not in OWN_KEYS)

_MARK = '{"job":'  # a compact text starts so; a whole answer starts with '{"ok":'
_NUMBERS = {name: (float if isinstance(field, pw.FloatField) else int)
            for name, field in Job._meta.fields.items()
            if isinstance(field, (pw.FloatField, pw.IntegerField)) and name in REST_KEYS}




def _number_text(value):
    """``jsonio.dumps(value)`` of a number: json writes a finite int or float as its repr."""
    kind = type(value)
    if kind is int or (kind is float and math.isfinite(value)):
        return kind.__repr__(value)
    return jsonio.dumps(value)


def _digest(rest):
    return hashlib.sha256(jsonio.dumps(rest).encode()).hexdigest()[:32]


def _as_stored(job):
    """The rest of ``job`` as the row gives it back (numbers in their column's type)."""
    return [(_NUMBERS[k](job[k]) if k in _NUMBERS and job[k] is not None else job[k]) for k in REST_KEYS]


def pack(op, answer, text):
    """The text to store for ``answer`` (whose JSON is ``text``) of a write ``op`` (its
    :class:`~balsamdb.operations.Operation`) applied now."""
    result = answer.get("result")
    if op.answer != "job" or not answer.get("ok") or not isinstance(result, dict) \
            or tuple(result) != JOB_KEYS or len(answer) != 2:
        return text
    stored = _as_stored(result)
    compact = {"job": result["id"]}
    compact.update((k, result[k]) for k in OWN_KEYS)
    compact["rest"] = _digest(stored)
    # A number whose type the column keeps (an int in an INTEGER, a float in a REAL) reads back
    # as the same text: only the others are compared.
    exact = {k: result[k] for k, v in zip(REST_KEYS, stored)
             if k in _NUMBERS and type(v) is not type(result[k]) and _number_text(v) != _number_text(result[k])}
    if exact:
        compact["exact"] = exact
    # Parsed back (unpack), never compared as text: orjson's text.
    return jsonio.dumps_fast(compact)


def unpack(fast, stored):
    """The original answer (a dict) of the stored text ``stored``; ``fast``: the
    :class:`~balsamdb.statements.Statements` of the database, inside the transaction."""
    if not stored.startswith(_MARK):
        return jsonio.loads(stored)
    compact = jsonio.loads(stored)
    rest = _rest(fast, compact["job"], compact["rest"])
    if rest is None:  # never expected: the fields are kept before any change
        return {"ok": False, "error": ServerError(
            f"this write was applied, but its answer can no longer be rebuilt (job {compact['job']} "
            "was changed outside balsamdb)").to_dict()}
    result = dict(zip(REST_KEYS, rest))
    result.update((k, compact[k]) for k in OWN_KEYS)
    result.update(compact.get("exact", {}))
    return {"ok": True, "result": {k: result[k] for k in JOB_KEYS}}


def _rest(fast, job_id, digest):
    job = fast.job(job_id)
    if job is not None:
        rest = _as_stored(job)
        if _digest(rest) == digest:
            return rest
    with pw.__exception_wrapper__:
        row = fast.database.execute_sql(_select_base(fast.database), (digest,)).fetchone()
    return jsonio.loads(row[0]) if row else None


def preserve(fast, op, params):
    """Before ``op`` (an :class:`~balsamdb.operations.Operation`) changes or deletes jobs: keep
    their current fields for the compact answers that refer to them (see the module docs)."""
    if op.changes_jobs is None or not isinstance(params, dict):
        return
    ids = op.changes_jobs(params)
    if not isinstance(ids, list):
        return
    ids = [i for i in dict.fromkeys(_job_id(i) for i in ids) if i]
    database, q = fast.database, quoter(fast.database)
    with pw.__exception_wrapper__:
        oldest = database.execute_sql(f"SELECT MIN({q('applied_at')}) FROM "
                                      f"{q(AppliedRequest._meta.table_name)}").fetchone()[0]
        if oldest is None:
            return  # no recorded answer can refer to any job
        rows = []
        select = fast.select_job.rsplit(" WHERE ", 1)[0] + f" WHERE {q('id')} IN "
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for values in database.execute_sql(select + "(" + ", ".join([database.param] * len(chunk)) + ")",
                                               chunk).fetchall():
                job = {f.name: f.python_value(v) for f, v in zip(fast.job_columns, values)}
                # A job last written before the oldest recorded answer (less a margin for the
                # time between a write and its record) has no recorded answer that refers to it.
                if job["updated_at"] is not None and job["updated_at"] < oldest - 3600:
                    continue
                rest = _as_stored(job)
                rows.append((_digest(rest), time.time(), jsonio.dumps(rest)))
        if rows:
            database.cursor().executemany(_upsert_base(database), rows)


def _job_id(value):
    """The stored form of a job id, or None for what cannot be one (the operation refuses it)."""
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _select_base(database):
    q, p = quoter(database), database.param
    return f"SELECT {q('fields')} FROM {q(JobAnswerBase._meta.table_name)} WHERE {q('digest')} = {p}"


def _upsert_base(database):
    q, p = quoter(database), database.param
    return (f"INSERT INTO {q(JobAnswerBase._meta.table_name)} ({q('digest')}, {q('applied_at')}, {q('fields')}) "
            f"VALUES ({p}, {p}, {p}) ON CONFLICT ({q('digest')}) DO UPDATE SET {q('applied_at')} = "
            f"excluded.{q('applied_at')}")


def prune_bases(database, before):
    """Forget the kept fields of jobs changed before ``before``: every answer that refers
    to them is older still (they were kept when the job changed)."""
    q, p = quoter(database), database.param
    with pw.__exception_wrapper__:
        cursor = database.cursor()
        cursor.execute(f"DELETE FROM {q(JobAnswerBase._meta.table_name)} WHERE {q('applied_at')} < {p}", (before,))
        return cursor.rowcount


def copy_bases(source, destination, chunk=2000):
    """Copy the kept job fields between two peewee databases (with the record of applied
    requests, when a DB directory moves to another store); returns how many were read."""
    table = JobAnswerBase._meta.table_name
    qs = quoter(source)
    select = (f"SELECT {qs('digest')}, {qs('applied_at')}, {qs('fields')} FROM {qs(table)} "
              f"WHERE {qs('digest')} > {source.param} ORDER BY {qs('digest')} LIMIT {int(chunk)}")
    last, total = "", 0
    while True:
        rows = source.execute_sql(select, (last,)).fetchall()
        if not rows:
            return total
        with destination.atomic():
            destination.cursor().executemany(_upsert_base(destination), rows)
        total += len(rows)
        last = rows[-1][0]
