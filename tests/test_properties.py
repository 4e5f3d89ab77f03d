"""Properties, not examples (issue 25): hypothesis over the whole of a rule, where the example tests
check the cases someone thought of.

- the job state machine: every pair of states against the rules docs/protocol.md states ("Job
  states"), and random walks of a real job through the direct SQLite route;
- the spool's order: arbitrary client ids, process ids, sequence numbers and clocks (also clocks
  that step back) give the order of the calls, across clients by time, within one client always;
- the envelope: any bytes are refused with BadRequest/AuthenticationError or read back, never a crash;
  any JSON object signed round-trips;
- every read route's permission check: the route variants come from the Flask app's URL map, the
  reserved labels of the Sumatra API and the query parameters the views read (found in their source),
  not from a hand list.

Examples are derandomized (the same on every run; CI stays reproducible); BALSAMDB_FUZZ_RANDOM=1 draws
new ones, as tests/test_fuzz.py does.
"""

import base64
import json
import os
import re
import tempfile
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import balsamdb
from balsamdb import protocol, states
from balsamdb import spool as spool_module
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import AuthenticationError, BadRequest, InvalidTransition
from balsamdb.passwords import hash_password

PROPERTY = settings(max_examples=int(os.environ.get("BALSAMDB_PROPERTY_EXAMPLES", "60")), deadline=None,
                    derandomize=not os.environ.get("BALSAMDB_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                    # scripts/mutants.py needs the failure, not the smallest example: no shrinking there.
                    phases=[p for p in Phase if not (p == Phase.shrink and os.environ.get("BALSAMDB_NO_SHRINK"))])

# -- the job state machine --------------------------------------------------------------------------
# docs/protocol.md, "Job states", rule by rule (the states.py docstring says the same).
PIPELINE = ["CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE",
            "POSTPROCESSED", "JOB_FINISHED"]
PRE_RUN = PIPELINE[:PIPELINE.index("RUNNING") + 1]


def documented_allowed(current, new):
    """Whether docs/protocol.md lets a job in ``current`` move to ``new``."""
    if current in ("JOB_FINISHED",):
        return False  # "JOB_FINISHED is final"
    if new in ("FAILED", "USER_KILLED") and current not in ("JOB_FINISHED", "FAILED", "USER_KILLED"):
        return True  # "any state but JOB_FINISHED, FAILED and USER_KILLED may go to FAILED or USER_KILLED"
    if current in PRE_RUN and new in PRE_RUN:
        # "a job moves forward and may skip the pre-run stages ... RUNNING cannot be skipped"
        return PRE_RUN.index(new) > PRE_RUN.index(current)
    if current == "RUNNING":
        return new in ("RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT")
    if current == "RUN_DONE":
        return new in ("POSTPROCESSED", "JOB_FINISHED")
    if current == "POSTPROCESSED":
        return new == "JOB_FINISHED"
    if current in ("RUN_ERROR", "RUN_TIMEOUT", "FAILED", "USER_KILLED"):
        return new == "RESTART_READY"
    if current == "RESTART_READY":
        return new in ("PREPROCESSED", "RUNNING")
    return False


def test_the_state_table_is_the_documented_rules():
    """Every pair of states (and a state to itself) against the documented rules (broken: a state
    moving to itself; JOB_FINISHED made restartable)."""
    assert set(states.STATES) >= set(PIPELINE) | {"RUN_ERROR", "RUN_TIMEOUT", "RESTART_READY", "FAILED",
                                                   "USER_KILLED"}
    wrong = []
    for current in states.STATES:
        for new in states.STATES:
            try:
                states.check_transition(current, new)
                allowed = True
            except InvalidTransition:
                allowed = False
            if allowed != documented_allowed(current, new):
                wrong.append(f"{current} -> {new}: code {'allows' if allowed else 'refuses'}")
    assert not wrong, "the state table differs from docs/protocol.md:\n" + "\n".join(wrong)


@pytest.fixture(scope="module")
def walk_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("walks") / "db"
    DBDirectory(path).init()
    with balsamdb.connect(path) as db:
        yield db


@PROPERTY
@given(st.lists(st.sampled_from(states.STATES), min_size=1, max_size=8))
def test_random_walks_of_a_real_job_follow_the_documented_rules(walk_db, moves):
    """A real job (direct SQLite) sent through arbitrary states: each move is applied exactly when
    the rules allow it, and the job's history is the moves applied."""
    job = walk_db.jobs.create(name="walk")
    state, applied = "CREATED", ["CREATED"]
    for new in moves:
        if documented_allowed(state, new):
            walk_db.jobs.update_state(job.id, new)
            state = new
            applied.append(new)
        else:
            with pytest.raises(InvalidTransition):
                walk_db.jobs.update_state(job.id, new)
    fresh = walk_db.jobs.get(job.id)
    assert fresh.state == state
    assert [h["to_state"] for h in walk_db.jobs.history(job.id)] == applied


# -- the spool's order --------------------------------------------------------------------------------
CLIENT = st.tuples(st.integers(1, 2 ** 22), st.binary(min_size=3, max_size=3).map(bytes.hex))


class _Clock:
    """Stands in for the ``time`` module of balsamdb.spool: ``time_ns`` returns the readings given."""

    def __init__(self, readings):
        self.readings = list(readings)

    def time_ns(self):
        return self.readings.pop(0)

    def time(self):
        return self.readings[0] / 1e9 if self.readings else 0.0


def _spool_calls(calls, readings, monkeypatch_target):
    """Put one file per call ``(client index, payload)`` through that client's SpoolWriter (pid and
    random part from ``clients``), with the clock reading ``readings[i]``; returns the spool's
    pending order as the list of call indexes."""
    with tempfile.TemporaryDirectory() as tmp:
        spool = spool_module.Spool(Path(tmp) / "spool")
        writers = {}
        original = spool_module.time
        spool_module.time = _Clock(readings)
        try:
            for index, (client, pid, random_part) in enumerate(calls):
                writer = writers.get(client)
                if writer is None:
                    writer = writers[client] = spool_module.SpoolWriter(spool)
                    writer._renew()
                    writer.client = f"{pid}x{random_part}"
                writer.put(str(index).encode())
        finally:
            spool_module.time = original
        return [int(path.read_bytes()) for path in spool.pending()]


@st.composite
def spool_runs(draw, monotonic):
    clients = draw(st.lists(CLIENT, min_size=1, max_size=5, unique=True))
    picks = draw(st.lists(st.integers(0, len(clients) - 1), min_size=1, max_size=25))
    calls = [(i, *clients[i]) for i in picks]
    base = draw(st.integers(10 ** 18, 2 * 10 ** 18))
    if monotonic:
        gaps = draw(st.lists(st.integers(1, 10 ** 12), min_size=len(calls), max_size=len(calls)))
        readings = [base + sum(gaps[:i + 1]) for i in range(len(calls))]
    else:
        readings = draw(st.lists(st.integers(base, base + 10 ** 6), min_size=len(calls), max_size=len(calls)))
    return calls, readings


@PROPERTY
@given(spool_runs(monotonic=True))
def test_spool_order_is_time_order_across_clients(run):
    """With a clock that moves forward, the spool gives the files in the order of the calls, whatever
    the clients' ids, process ids (which wrap) and sequence numbers (broken: newest first; order by
    client)."""
    calls, readings = run
    assert _spool_calls(calls, readings, None) == list(range(len(calls)))


@PROPERTY
@given(spool_runs(monotonic=False))
def test_one_clients_spool_order_survives_a_clock_that_steps_back(run):
    """With a clock that jumps back and forth, each client's own files still come in the order of
    its calls (broken: the previous file's time not used as a floor)."""
    calls, readings = run
    order = _spool_calls(calls, readings, None)
    assert sorted(order) == list(range(len(calls)))
    for client in {c[0] for c in calls}:
        own = [i for i in order if calls[i][0] == client]
        assert own == sorted(own), f"client {client}'s files out of order: {own}"


# -- the envelope --------------------------------------------------------------------------------------
SECRET = b"k" * 64
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 53, 2 ** 53) | st.text(max_size=20)
                    | st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


BODIES = st.one_of(st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode()),
                   st.text(max_size=50).map(str.encode))


@PROPERTY
@given(BODIES)
def test_the_envelope_refuses_or_reads_any_bytes(body):
    """Any bytes (random, or any JSON text: arrays, numbers, strings), signed or not, behind the magic
    or not: decode raises BadRequest or AuthenticationError, or returns a dict; nothing else escapes
    (broken: a signed JSON array returned as a message)."""
    for signed in (True, False):
        for with_magic in (True, False):
            frame = (protocol.MAGIC if with_magic else b"") + (protocol.sign(SECRET, body) if signed else b"") + body
            for strict in (True, False):
                try:
                    message = protocol.decode(SECRET, [frame], max_bytes=1 << 20, strict=strict)
                except (BadRequest, AuthenticationError):
                    continue
                assert isinstance(message, dict), (frame, message)


@PROPERTY
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=5), st.binary(min_size=1, max_size=40))
def test_a_signed_message_round_trips_and_another_key_is_refused(message, other_key):
    frames = protocol.encode(SECRET, message)
    assert protocol.decode(SECRET, frames) == message
    assert protocol.decode(SECRET, frames, strict=False) == message
    if other_key != SECRET:
        with pytest.raises(AuthenticationError):
            protocol.decode(other_key, frames)


# -- every read route's permission check ------------------------------------------------------------------
MARKER = "private-marker-7f3a"
USERS = {"ada": "ada-s3cret!", "bob": "bob's pass phrase", "lab": "lab admin pw"}
SOURCES = ["dbserver/http"]
# A value that makes each parameter do something (records r1, r2 with versions 1, 2 and tag t).
VALUES = {"version": ["1", "2", "x"], "compare": ["r1,r2", "1,2", "1"], "sort": ["label", "-label"],
          "page": ["1", "2"], "tags": ["t"], "tag": ["t"], "format": ["json", "html", "csv"], "search": ["marker", "r"]}


def query_parameters():
    """The query parameters the views read: every ``args.get("x")``, ``args.getlist("x")`` and ``"x" in
    args`` in the HTTP store's source, and the find page's LIST_PARAMS."""
    root = Path(balsamdb.__file__).resolve().parent.parent
    names = set()
    for source in SOURCES:
        where = root / source
        for path in ([where] if where.is_file() else sorted(where.glob("*.py"))):
            text = path.read_text()
            names.update(re.findall(r"args\.(?:get|getlist)\(\s*[\"']([a-z_]+)[\"']", text))
            names.update(re.findall(r"[\"']([a-z_]+)[\"']\s+in\s+(?:flask\.)?(?:request\.)?args\b", text))
    from balsamdb.server.http import record_pages

    names.update(record_pages.LIST_PARAMS)
    return sorted(names)


def route_variants(app):
    """(path, needs) for every GET rule of the app that reads a project or a job: the path on the
    private project with each reserved label; ``needs``: "member" or "admin"."""
    from balsamdb.server.http.urls import RESERVED_LABELS, RESERVED_PREFIXES

    variants = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint.endswith("static"):
            continue
        args = set(rule.arguments)
        if "project" in args:
            labels = ["r1"] + list(RESERVED_LABELS) + [prefix + "t" for prefix in RESERVED_PREFIXES]
            for label in (labels if "label" in args else [None]):
                values = {"project": "Priv", "label": label} if label else {"project": "Priv"}
                variants.append((rule.build(values, append_unknown=False)[1], "member"))
        elif rule.rule.startswith("/_balsamdb/jobs"):
            values = {a: "00000000-0000-0000-0000-000000000000" for a in args}
            variants.append((rule.build(values, append_unknown=False)[1], "admin"))
    return variants


@pytest.fixture(scope="module")
def read_app(tmp_path_factory):
    """The app of `db serve` (in-process) on a DB directory with a private project Priv (member: ada;
    bob is no member, lab an admin), records r1 (saved twice) and r2 tagged t, all holding MARKER."""
    from balsamdb.server.http import create_app

    path = tmp_path_factory.mktemp("read-routes") / "db"
    DBDirectory(path).init()
    with balsamdb.connect(path) as db:
        for name, password in USERS.items():
            db.call("user_save", name=name, password_hash=hash_password(password), admin=name == "lab")
        db.projects.save("Priv", description="private", public=False)
        db.call("permission_grant", project="Priv", user="ada")
        for turn, label in enumerate(("r1", "r2", "r1")):
            db.records.save("Priv", {"label": label, "tags": ["t"], "reason": f"{MARKER} {turn}",
                                     "parameters": {"m": MARKER}})
        db.jobs.create(name=MARKER)
    app = create_app(path)
    return app, route_variants(app), query_parameters()


def _auth(user):
    if user is None:
        return {}
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@st.composite
def read_requests(draw, variants, parameters):
    path, needs = draw(st.sampled_from(variants))
    chosen = draw(st.lists(st.sampled_from(parameters), max_size=3, unique=True))
    query = {name: draw(st.sampled_from(VALUES.get(name, ["", "1", "t"]))) for name in chosen}
    accept = draw(st.sampled_from(["application/json", "text/html", "*/*"]))
    return path, needs, query, accept


def test_the_route_variants_come_from_the_app(read_app):
    """The generator sees what it must: the query-parameter views and the reserved labels (a test of
    the test: a generator that found nothing would check nothing)."""
    _, variants, parameters = read_app
    assert {"versions", "version", "search", "sort", "page", "compare", "tags"} <= set(parameters), parameters
    paths = {p for p, _ in variants}
    assert {"/Priv/", "/Priv/r1/", "/Priv/last/", "/Priv/permissions/", "/Priv/tag/t/", "/_balsamdb/jobs/"} <= paths


def test_every_read_route_variant_checks_the_permission(read_app):
    """Anonymous callers get 401, a non-member 404 (as for a project that does not exist, so that a
    non-member cannot tell which projects exist), a non-admin on the jobs pages 403 (or 406 for an
    unknown ?format, refused before anything is read), and the
    answer holds nothing of the private records; whatever the route variant, query parameters and
    Accept header (broken: `?versions` answering before the permission check; the find page reading
    the project without it)."""
    app, variants, parameters = read_app
    client = app.test_client()
    outsider = {"member": "bob", "admin": "ada"}

    def refused(path, needs, query, accept):
        for user, expected in ((None, 401), (outsider[needs], 404 if needs == "member" else 403)):
            answer = client.get(path, query_string=query, headers={"Accept": accept, **_auth(user)})
            what = f"GET {path}?{query} Accept {accept} as {user or 'anonymous'}"
            # 406: a ?format no page speaks, refused before anything is read.
            assert answer.status_code in (expected, 406), f"{what}: {answer.status_code} {answer.get_data()[:200]!r}"
            assert MARKER.encode() not in answer.get_data(), f"{what} leaked the private record"

    # Every route variant with no parameter and with each parameter and value alone, exhaustively;
    # then hypothesis draws combinations of up to three.
    for path, needs in variants:
        refused(path, needs, {}, "application/json")
        for name in parameters:
            for value in VALUES.get(name, ["", "1", "t"]):
                refused(path, needs, {name: value}, "application/json")

    @PROPERTY
    @given(read_requests(variants, parameters))
    def check(case):
        refused(*case)

    check()
    # The property would pass on a server that refuses everyone: the member and the admin read.
    for user in ("ada", "lab"):
        answer = client.get("/Priv/r1/", query_string={"versions": ""}, headers={"Accept": "application/json",
                                                                              **_auth(user)})
        assert answer.status_code == 200, (user, answer.status_code, answer.get_data()[:200])
        assert len(answer.json["versions"]) == 2, answer.json


# -- the fast JSON paths give json's text and value (issue 22, item 7) ------------------------------------

_JSON_REFERENCE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode
_ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.floats(min_value=-1e-3, max_value=1e-3)
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | _ANY_FLOAT
            | st.text() | st.sampled_from(["1e-7,", "0.00001", "3e-4]", "x" * 3]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@PROPERTY
@given(_VALUES)
@example({"a": [1e-07]})  # indented, a small float may end a line
def test_the_canonical_text_is_jsons_whatever_the_value(value):
    """orjson makes the canonical text of digests and export files only where its text is json's: small
    floats (1e-07), NaN, integers beyond 64 bits and lone surrogates all come out as json writes them;
    the request encoder refuses NaN and infinities as before and reads back to the same value."""
    from balsamdb import jsonio
    from balsamdb.exceptions import BadRequest
    from balsamdb.protocol import dumps_request

    assert jsonio.dumps_canonical(value) == _JSON_REFERENCE(value)
    assert jsonio.dumps_indented(value) == json.dumps(value, indent=2, ensure_ascii=False)  # db ls --json
    try:
        expected = jsonio.dumps_finite({"v": value})
    except ValueError:
        with pytest.raises(BadRequest):
            dumps_request({"op": "x", "v": value})
        return
    assert json.loads(dumps_request({"v": value})) == json.loads(expected)
    assert jsonio.loads_strict(expected) == json.loads(expected)


@PROPERTY
@given(_VALUES, st.booleans())
@example({"big": 2 ** 70, "b": 12345678901234567890}, False)
@example([1e-07, 0.00001, float("nan"), float("-inf"), True], True)
@example({"\ud800": "\udfff"}, False)
def test_the_canonical_text_made_piece_by_piece_is_jsons(value, ascii_only):
    """An export line is made from pieces (store_lines.py): the canonical text of a stored JSON text
    (orjson where provably json's: not NaN, 1e-07, 19-digit runs, lone surrogates), of a column's
    value, and of objects and lists of those texts; each is json's text of the same value."""
    from balsamdb import jsonio

    stored = json.dumps(value, ensure_ascii=ascii_only)  # as a column may hold it: any key order, NaN
    assert jsonio.canonical_text(stored) == _JSON_REFERENCE(json.loads(stored))
    members = value if isinstance(value, dict) else {"v": value, "": [value], "{0}": None}
    keys = tuple(members)
    assert jsonio.canonical_object(keys)(*[_JSON_REFERENCE(members[k]) for k in keys]) == _JSON_REFERENCE(members)
    items = value if isinstance(value, list) else [value]
    assert jsonio.canonical_list(_JSON_REFERENCE(item) for item in items) == _JSON_REFERENCE(items)
    for scalar in items:
        if not isinstance(scalar, (list, dict)):
            assert jsonio.canonical_scalar(scalar) == _JSON_REFERENCE(scalar)


def test_the_canonical_text_spells_every_code_point_as_json():
    from balsamdb import jsonio

    for code in range(0, 0x110000, 17):
        char = chr(code)
        value = {char: char + "e-5,", "a" + char: [char, 1e-05]}
        assert jsonio.dumps_canonical(value) == _JSON_REFERENCE(value), hex(code)
