"""The history checker (tests/history.py) on hand-made histories: it passes a good one and names
each kind of bad one (lost, applied twice, invented, refused yet applied, reordered against real
time or a client's own order, stale final value); and on a real run of writers through a server."""

import json

import pytest

import balsamdb
from helpers import Writers
from history import HistoryLog, Op, check, check_writers, load


def op(client, seq, key, value, invoked, completed, outcome="ok", kind="write"):
    return Op(client, seq, key, kind, value, invoked, completed, outcome)


# Client a writes a1 then a2; b writes b1 after a2 returned, then b2 (killed mid-call); c spools c1
# while a writes, then its c2 (another key) ends in an error.
GOOD = [op("a", 1, "x", "a1", 0.0, 1.0), op("a", 2, "x", "a2", 1.1, 2.0),
        op("b", 1, "x", "b1", 2.5, 3.0), op("b", 2, "x", "b2", 3.1, None, outcome=None),  # killed mid-call
        op("c", 1, "x", "c1", 0.5, 2.8, outcome="spooled"), op("c", 2, "y", "c2", 2.9, 3.5, outcome="error")]


def test_a_good_history_passes():
    # c1 overlaps a1, a2 and b1 in real time: it may land anywhere before b1 returned... but b1 was
    # invoked before c1 returned, so either order of b1 and c1 is fine; b2 (killed) may be missing.
    verdict = check(GOOD, {"x": ["a1", "c1", "a2", "b1"]}, {"x": "b1"})
    assert verdict.ok, str(verdict)
    assert check(GOOD, {"x": ["a1", "a2", "b1", "c1", "b2"], "y": ["c2"]}, {"x": "b2", "y": "c2"}).ok


@pytest.mark.parametrize("applied,final,problem", [
    ({"x": ["a1", "a2", "c1"]}, {"x": "c1"}, "'b1' lost: ok"),                            # lost acknowledged
    ({"x": ["a1", "a2", "b1"]}, {"x": "b1"}, "'c1' lost: spooled"),                        # lost spooled
    ({"x": ["a1", "c1", "a2", "a2", "b1"]}, {"x": "b1"}, "'a2' applied twice"),            # duplicated
    ({"x": ["a1", "c1", "zz", "a2", "b1"]}, {"x": "b1"}, "'zz' applied but never written"),  # invented
    ({"x": ["a2", "a1", "c1", "b1"]}, {"x": "b1"}, "'a2' (client a call 2"),               # a client's order
    ({"x": ["a1", "c1", "b1", "a2"]}, {"x": "a2"}, "'b1' (client b call 1"),              # real-time order
    ({"x": ["a1", "c1", "a2", "b1"]}, {"x": "a2"}, "final value 'a2' is not the last"),    # stale final
])
def test_a_bad_history_is_named(applied, final, problem):
    verdict = check(GOOD, applied, final)
    assert not verdict.ok
    assert any(problem in p for p in verdict.problems), str(verdict)


def test_a_refused_write_that_was_applied_is_named():
    ops = GOOD + [op("d", 1, "x", "d1", 5.0, 5.1, outcome="refused")]
    verdict = check(ops, {"x": ["a1", "c1", "a2", "b1", "d1"]}, {"x": "d1"})
    assert any("applied although it was refused" in p for p in verdict.problems), str(verdict)


def test_the_log_round_trips_and_a_torn_line_is_ignored(tmp_path):
    path = tmp_path / "h.jsonl"
    log = HistoryLog(path, "w1")
    first = log.invoke("x", "write", "v1", 1.0)
    log.complete(first, "ok", 2.0)
    second = log.invoke("x", "write", "v2", 3.0)
    log.close()
    with open(path, "a") as handle:
        handle.write('{"e": "ok", "client": "w1", "se')  # killed while writing the completion
    ops = sorted(load([path]), key=lambda o: o.seq)
    assert [(o.value, o.outcome, o.completed) for o in ops] == [("v1", "ok", 2.0), ("v2", None, None)]
    assert second == 2 and json.loads(path.read_text().splitlines()[0])["e"] == "invoke"


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_writers_through_a_server_give_a_history_that_passes(served_dbdir, tmp_path):
    """Four real writer processes (creates and register saves) through the server: the checker
    passes the run, and fails it once one acknowledged register write is removed from the database."""
    writers = Writers(served_dbdir, tmp_path, nprocs=4, count=40,
                      env=dict(__import__("os").environ, WRITER_REGISTERS="2", WRITER_REGISTER_EVERY="2"))
    writers.start()
    results = writers.wait()
    assert all(code == 0 for code, _, _ in results), results
    verdict = check_writers(served_dbdir, writers, registers=2)
    assert verdict.ops == 4 * 40 + 4 * 20 and verdict.outcomes == {"ok": 240}, str(verdict)
    with balsamdb.connect(served_dbdir) as db:
        db.records.save("history", {"label": "reg-0", "reason": "written by nobody"})
    with pytest.raises(AssertionError, match="written by nobody' applied but never written"):
        check_writers(served_dbdir, writers, registers=2)
