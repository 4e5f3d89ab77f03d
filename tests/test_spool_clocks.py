"""Order across hosts whatever their clocks (issue 24, item 3): a spooled write that began after
another spooled write's call returned, on any host sharing the DB directory, is applied after it.

Two job processes hand one record over causally (each saves only after the other's save
returned) while no server runs, so that every save is spooled; their clocks are skewed by the
same amount in opposite directions (a ``sitecustomize`` that shifts ``time.time`` and
``time.time_ns``, as another host's clock would be).  The server then applies the spool: the
record's versions must be the saves in the order of the hand-over."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import db_cli, kill_everything, wait_for

import balsamdb
from balsamdb.dbdir import DBDirectory
from balsamdb.spool import Spool

CLIENT = Path(__file__).resolve().parent / "handover_client.py"
SAVES = 12

SKEWED_CLOCK = """import os, time
_offset = float(os.environ.get("TEST_CLOCK_OFFSET", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset
time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
"""


@pytest.mark.parametrize("skew", [0.005, 0.05, 3.0])
def test_causal_hand_overs_between_skewed_clocks_are_applied_in_order(skew, tmp_path, request):
    """Before: spool names began with the wall clock (the larger of time_ns and the client's own
    last stamp), so the write of the client 2 x skew behind came first: with 50 ms and 3 s the
    versions came out of order.  Now each write claims a position by exclusive create in
    spool/seq, walking up past those taken."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    request.addfinalizer(lambda: kill_everything(path))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SKEWED_CLOCK)
    base = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH" and not k.startswith("BALSAMDB_")}
    clients = []
    for role, offset in ((1, +skew), (0, -skew)):  # the client ahead saves first
        env = dict(base, PYTHONPATH=str(site), TEST_CLOCK_OFFSET=repr(offset), BALSAMDB_REQUIRE_SERVER="1")
        clients.append(subprocess.Popen([sys.executable, str(CLIENT), str(path), str(role), str(SAVES),
                                         str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    try:
        outs = [proc.communicate(timeout=240) for proc in clients]
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(clients, outs):
        assert proc.returncode == 0, err[-2000:]
    assert sum(json.loads(out.strip().splitlines()[-1])["spooled"] for out, _err in outs) == SAVES
    assert Spool(path / "spool").count() == SAVES
    started = db_cli("dbserver", "--path", path)
    request.addfinalizer(lambda: db_cli("dbserver", "--stop", "--path", path))
    assert started.returncode == 0, started.stderr
    wait_for(lambda: Spool(path / "spool").count() == 0, 120, "the spool to drain")
    with balsamdb.connect(path) as db:
        versions = db.records.versions("P", "r")
        applied = [db.records.get("P", "r", version=v["version"])["v"] for v in versions]
    assert applied == list(range(1, SAVES + 1)), f"applied in the order {applied}"


CLAIMER = """import sys
from balsamdb.spool import Spool
spool = Spool(sys.argv[1])
print(" ".join(str(spool.claim_position()) for _ in range(int(sys.argv[2]))))
"""


def test_positions_leave_no_gaps_and_a_stale_start_never_goes_below_the_floor(tmp_path):
    """Four processes claim 50 positions each at once: 1..200, each once (the O_EXCL walk).  The
    server's trim writes the floor, then removes what is below: a claim that starts from a stale
    hint (or none) lands above every position still there, never on a removed one."""
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(spool.path), "50"], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    claimed = []
    for proc in procs:
        out, _err = proc.communicate(timeout=120)
        assert proc.returncode == 0
        claimed += [int(n) for n in out.split()]
    assert sorted(claimed) == list(range(1, 201))
    assert spool.trim_positions(keep=10) == 190  # the floor is 190: 191..200 stay
    assert spool._read_number("floor") == 190
    (spool.seq / "hint").write_text("3")  # a hint from before the trim (another host's stale view)
    assert spool.claim_position() == 201
    (spool.seq / "hint").unlink()
    assert spool.claim_position(start=5) == 202
    assert sorted(int(n) for n in os.listdir(spool.seq) if n.isdigit()) == list(range(191, 203))
