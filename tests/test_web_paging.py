"""The pages of `db serve` page by keys (``?after=``/``?before=`` in their links), and smt's listing streams.

In this process: the store's real application through Flask's test client, on a SQLite DB directory that
the library writes into directly (no write server) between two requests, as job processes would while
someone pages.  Following the "next" links must list every record and job that was there from the
start exactly once, whatever is added meanwhile; "previous" must come back; old ``?page=N`` links work.
"""

import base64
import html
import json
import re

import pytest
from records import sumatra_record, sweep_record

import balsamdb
from balsamdb.passwords import hash_password

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ada:ada pw").decode()}
HTML = dict(AUTH, Accept="text/html")


@pytest.fixture
def app(tmp_path):
    """(test client, DB directory): a SQLite DB directory with admin ada, project P, no server."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.server.http import create_app

    path = tmp_path / "db"
    DBDirectory(path).init()
    with balsamdb.connect(path) as db:
        db.call("user_save", name="ada", password_hash=hash_password("ada pw"), admin=True)
        db.call("project_save", name="P")
    return create_app(path).test_client(), path


def save(path, docs):
    with balsamdb.connect(path) as db:
        for doc in docs:
            db.call("record_save", project="P", record=doc)


def walk(client, url, between=lambda n: None, pattern=r'<td data-column="label"><a href="[^"]+">([^<]+)</a>'):
    """What the pages from ``url`` on show, page by page, following each page's next link
    (``between(n)`` runs after page n); also the pages' HTML."""
    shown, pages = [], []
    for n in range(1000):
        answer = client.get(url, headers=HTML)
        assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
        body = answer.get_data(as_text=True)
        shown.append(re.findall(pattern, body))
        pages.append(body)
        link = re.search(r'rel="next" href="([^"]+)"', body)
        if not link:
            return shown, pages
        assert "page=" not in link.group(1), "the next link holds a key, not a page number"
        url = url.split("?")[0] + html.unescape(link.group(1))
        between(n)
    raise AssertionError("the next links never ended")


@pytest.mark.parametrize("sort", ["", "-duration", "duration", "outcome", "-label"])
def test_next_links_list_every_record_once_while_records_are_added(app, sort):
    client, path = app
    # 60 records of one timestamp (ties: the key's id decides) and 60 of their own; some without duration
    docs = [sumatra_record(f"same-{i:02d}", outcome="a" if i % 2 else "b") for i in range(60)]
    docs += [sweep_record(f"run-{i:03d}", i, duration=None if i % 7 == 0 else float(i % 9)) for i in range(60)]
    save(path, docs)
    before = {d["label"] for d in docs}
    added = []

    def write_more(n):  # new records (newer, and with every sort key) and a tag changed on an old one
        new = [sweep_record(f"new-{n}-{k}", 100 + n, duration=float(k)) for k in range(3)]
        save(path, new + [sumatra_record(f"same-{n:02d}", outcome="a" if n % 2 else "b", tags=["moved"])])
        added.extend(d["label"] for d in new)

    shown, _pages = walk(client, f"/P/?sort={sort}" if sort else "/P/", write_more)
    labels = [label for page in shown for label in page]
    assert len(labels) == len(set(labels)), f"a record listed twice: {sorted(l for l in labels if labels.count(l) > 1)}"
    assert before <= set(labels), f"records never listed: {sorted(before - set(labels))}"
    assert set(labels) <= before | set(added)
    assert all(len(page) == 50 for page in shown[:-1])


def test_previous_links_and_old_page_links_show_the_same_records(app):
    client, path = app
    save(path, [sweep_record(f"run-{i:03d}", i) for i in range(120)])
    shown, pages = walk(client, "/P/?sort=-duration")
    assert [len(p) for p in shown] == [50, 50, 20]
    assert "records 51&ndash;100 of 120" in pages[1] and "page 2 of 3" in pages[1]
    back = re.search(r'rel="prev" href="([^"]+)"', pages[2]).group(1)
    body = client.get("/P/" + html.unescape(back), headers=HTML).get_data(as_text=True)
    assert re.findall(r'<td data-column="label"><a href="[^"]+">([^<]+)</a>', body) == shown[1]
    assert "records 51&ndash;100 of 120" in body
    old = client.get("/P/?sort=-duration&page=3&format=json", headers=AUTH).get_json()
    assert [u.rsplit("/", 2)[1] for u in old["records"]] == shown[2] and old["page"] == 3 and old["next"] is None
    assert client.get("/P/?page=9", headers=HTML).status_code == 200, "past the end: an empty page, not an error"
    # (a text key for the numbers of duration: PostgreSQL refused to compare them, a 500)
    for bad in ("after=12", "after=%5B1%2C%22x%22%5D", "before=nonsense", "at=0", "sort=duration&after=%5B%22m%22%2C10%5D",
                "sort=-user&before=%5B3%2C10%5D"):
        assert client.get(f"/P/?{bad}", headers=HTML).status_code == 400, bad


def test_jobs_pages_list_every_job_once_while_jobs_are_created(app):
    client, path = app
    with balsamdb.connect(path) as db:
        first = {db.jobs.create(f"sim-{i}", workflow="w", make_workdir=False).id for i in range(230)}
    created = []

    def create_more(n):
        with balsamdb.connect(path) as db:
            created.extend(db.jobs.create(f"late-{n}-{k}", workflow="w", make_workdir=False).id for k in range(5))

    shown, pages = walk(client, "/_balsamdb/jobs/?workflow=w", create_more, pattern=r'<tr data-job="([^"]+)"')
    ids = [i for page in shown for i in page]
    assert len(ids) == len(set(ids)) and first <= set(ids) and set(ids) <= first | set(created)
    assert "1&ndash;100" in pages[0] and "101&ndash;200" in pages[1]
    assert client.get("/_balsamdb/jobs/?page=2", headers=HTML).status_code == 200
    assert client.get("/_balsamdb/jobs/?before=%5B%5D", headers=HTML).status_code == 400
    assert client.get("/_balsamdb/jobs/?after=%5B%22x%22%2C%22y%22%5D", headers=HTML).status_code == 400


@pytest.mark.parametrize("tags", ["", "?tags=even,tens"])
def test_smt_listing_streams_the_bytes_it_always_sent(app, monkeypatch, tags):
    """Read 7 labels at a time, the JSON is byte for byte what ``json.dumps`` made of the whole list."""
    from balsamdb.server.http import reads

    client, path = app
    save(path, [sweep_record(f"run-{i:03d}", i) for i in range(40)] + [sumatra_record(f"tie {i}|ü") for i in range(9)])
    monkeypatch.setattr(reads, "LABEL_PAGE", 7)
    answer = client.get(f"/P/{tags}", headers=AUTH)
    assert answer.status_code == 200 and answer.is_streamed
    body = answer.get_data()
    listing = json.loads(body)
    wanted_tags = [t for t in tags[len("?tags="):].split(",") if t]
    from balsamdb.server.http.html import url_part
    from balsamdb.server.http.reads import page_reader, read_listing

    labels = page_reader(path).query(lambda db: read_listing(db, "P", wanted_tags))
    expected = {k: listing[k] for k in ("id", "name", "description", "public", "write_once", "created_at", "tags")}
    expected["records"] = [f"http://localhost/P/{url_part(label)}/" for label in labels]
    assert body == json.dumps(expected, ensure_ascii=False).encode()
    assert len(labels) > 2 * 7 and (len(labels) < 49 if tags else len(labels) == 49), len(labels)
