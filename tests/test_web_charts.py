"""The jobs page's chart of the count of jobs in each state over time, from the state history.

A small history with known times goes straight into the database (the moves of three jobs), and the
counts per bucket are checked exactly: the jobs that entered a state until the bucket's end less
those that left it.  The page keeps the history's moves per workflow and reads only the rows added
since its last refresh; a deleted job (its history gone) makes it read the whole history again.
Each test runs on SQLite and on PostgreSQL, read on the pages' read-only connection.
"""

import pytest

from balsamdb import job_views
from balsamdb.dbdir import DBDirectory
from balsamdb.models import MODELS, Job, JobStateChange
from balsamdb.settings import load_settings

T0 = 60 * 28_333_333  # a minute's start (2023-11-14 22:13 UTC)
#: job -> (workflow, [(seconds after T0, from_state, to_state)])
HISTORY = {
    "a": ("w", [(10, None, "CREATED"), (70, "CREATED", "RUNNING"), (190, "RUNNING", "JOB_FINISHED")]),
    "b": ("w", [(20, None, "CREATED"), (130, "CREATED", "RUNNING"), (250, "RUNNING", "FAILED")]),
    "c": ("other", [(130, None, "CREATED")]),
}


def _write(path, history):
    """Add ``history`` (as :data:`HISTORY`) to the database of DB directory ``path``, directly."""
    database = DBDirectory(path).open_database(load_settings())
    with database.bind_ctx(MODELS), database.atomic():
        for job, (workflow, moves) in history.items():
            if not Job.select().where(Job.id == job).exists():
                Job.insert(id=job, name=job, workflow=workflow, state=moves[-1][2], working_directory=".",
                           created_at=T0 + moves[0][0], updated_at=T0 + moves[-1][0]).execute()
            key = Job.select(Job.key).where(Job.id == job).scalar()  # what the history holds (schema 11)
            JobStateChange.insert_many([{"job": key, "time": T0 + t, "from_state": f, "to_state": to}
                                        for t, f, to in moves]).execute()
    database.close()


def _delete_job(path, job, history_only=False):
    database = DBDirectory(path).open_database(load_settings())
    with database.bind_ctx(MODELS), database.atomic():
        JobStateChange.delete().where(JobStateChange.job == Job.select(Job.key).where(Job.id == job)).execute()
        if not history_only:
            Job.delete().where(Job.id == job).execute()
    database.close()


@pytest.fixture
def reader(any_dbdir):
    from balsamdb.server.http.reads import page_reader

    _write(any_dbdir, HISTORY)
    return page_reader(any_dbdir)


def test_state_counts_over_time_of_a_known_history(reader):
    moves = reader.query(lambda db: job_views.history_moves(db))
    assert moves["entered"]["RUNNING"] == {T0 + 60: 1, T0 + 120: 1}
    assert moves["left"]["RUNNING"] == {T0 + 180: 1, T0 + 240: 1}
    # a bucket's count is the jobs in the state at its end: T0+60, +120, +180, +240, +300
    assert job_views.state_counts_over_time(moves, T0, 60, 5) == {
        "CREATED": [2, 1, 1, 1, 1],       # a and b; a runs; b runs, c is created; ...
        "RUNNING": [0, 1, 2, 1, 0],
        "JOB_FINISHED": [0, 0, 0, 1, 1],
        "FAILED": [0, 0, 0, 0, 1],
    }
    assert job_views.state_counts_over_time(moves, T0, 120, 3) == {
        "CREATED": [1, 1, 1], "RUNNING": [1, 1, 0], "JOB_FINISHED": [0, 1, 1], "FAILED": [0, 0, 1]}
    one_workflow = reader.query(lambda db: job_views.history_moves(db, workflow="w"))
    assert job_views.state_counts_over_time(one_workflow, T0, 60, 5)["CREATED"] == [2, 1, 0, 0, 0]


def test_the_page_reads_only_new_moves_and_notices_a_deleted_job(reader, any_dbdir):
    from balsamdb.server.http.job_pages import HistoryCache

    cache = HistoryCache()

    def counts(workflow=""):
        moves = reader.query(lambda db: cache.get(db, workflow))
        return job_views.state_counts_over_time(moves, T0, 60, 6)

    assert counts()["RUNNING"] == [0, 1, 2, 1, 0, 0]
    assert counts("w")["CREATED"] == [2, 1, 0, 0, 0, 0]
    _write(any_dbdir, {"c": ("other", [(300, "CREATED", "RUNNING")])})
    assert counts()["RUNNING"] == [0, 1, 2, 1, 0, 1], "the new move, added to the kept ones"
    assert counts("w")["RUNNING"] == [0, 1, 2, 1, 0, 0], "another workflow's move: not this one's"
    _delete_job(any_dbdir, "a")
    assert counts() == {"CREATED": [1, 1, 1, 1, 1, 0], "RUNNING": [0, 0, 1, 1, 0, 1], "FAILED": [0, 0, 0, 0, 1, 1]}, \
        "a deleted job's moves are gone"
    _write(any_dbdir, {"d": ("w", [(310, None, "CREATED")])})
    assert counts("w") == {"CREATED": [1, 1, 0, 0, 0, 1], "RUNNING": [0, 0, 1, 1, 0, 0], "FAILED": [0, 0, 0, 0, 1, 1]}
    # a job's history replaced (as an import of the job from another store does): the job count is
    # the same, and its old moves must go
    _delete_job(any_dbdir, "b", history_only=True)
    _write(any_dbdir, {"b": ("w", [(20, None, "CREATED"), (130, "CREATED", "RUNNING")])})
    assert counts("w") == {"CREATED": [1, 1, 0, 0, 0, 1], "RUNNING": [0, 0, 1, 1, 1, 1]}


def test_the_time_axis_fits_a_short_campaign():
    """A campaign of 6 minutes fills the axis (it was put in the right fifth of a fixed 30-minute
    axis, with a label at each end only)."""
    from balsamdb.server.http.job_pages import _plot

    start = 1_700_000_000 // 60 * 60
    points = [(start + 60 * m, 10) for m in range(6)]
    plot = _plot(points, now=start + 6 * 60 - 1)
    assert plot["start"] == start and plot["end"] - plot["start"] == 6 * 60
    assert len(plot["bars"]) == 6 and all(b["count"] == 10 for b in plot["bars"])
    times = [t["time"] for t in plot["ticks"]]
    assert len(times) >= 4 and times[0] == plot["start"] and times[-1] == plot["end"] and times == sorted(times)


def test_a_deleted_jobs_history_ids_taken_again_by_another_jobs_moves_are_noticed(reader, any_dbdir):
    """The newest rows of the history go with their job, and another job's rows take their ids (SQLite
    gives the largest id again): the number of jobs and of their moves are as before, and the newest id
    too, yet the moves are another job's (broken: the page kept the deleted job's moves until its next
    whole read, ten minutes later)."""
    from balsamdb.server.http.job_pages import HistoryCache

    cache = HistoryCache()

    def counts(history):
        moves = reader.query(lambda db: history.get(db, ""))
        return job_views.state_counts_over_time(moves, T0, 60, 6)

    _write(any_dbdir, {"d": ("w", [(310, None, "CREATED")])})
    assert counts(cache)["CREATED"] == [2, 1, 1, 1, 1, 2]
    _delete_job(any_dbdir, "d")
    _write(any_dbdir, {"e": ("w", [(20, None, "CREATED")])})  # one move, as d had
    assert counts(cache) == counts(HistoryCache()), "the moves of the job that took the deleted one's ids"
