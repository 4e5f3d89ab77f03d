"""Who may read and change a project over HTTP: every route that reads or changes a project x
{anonymous, non-member, member, admin} x {private, public project} -> the expected status, and
nothing changed where the request was refused.

The policy (docs/http.md, "Authentication and permissions"):

- an anonymous caller may only read public projects (never through the operation endpoint,
  which needs a login for every call);
- members may read, write and grant their projects;
- a logged-in non-member may read public projects, and gets 403 for every write, public or not;
  a read of a private project answers them 404, as for a project that does not exist (reads do
  not tell which projects exist: docs/http.md);
- admins may do everything;
- who the members are is shown to members and admins only, also for a public project.

Each case runs on its own copy of one prepared DB directory, through Flask's test client (the
application of ``db serve``; no server process is running, so it writes SQLite directly); one
test at the end runs a few of the cases against a real ``db serve`` process in front of a write server.
"""

import base64
import shutil
import sqlite3

import pytest

import balsamdb
from balsamdb.dbdir import DBDirectory
from balsamdb.passwords import hash_password
from balsamdb.server.http import create_app
from served import Served

PASSWORDS = {"ada": "ada-s3cret!", "bob": "bob's pass phrase", "lab": "lab admin pw"}
ROLES = {"anonymous": None, "non-member": "bob", "member": "ada", "admin": "lab"}
PROJECTS = {"private": "Priv", "public": "Pub"}

# What each kind of access gives each role: on a private and on a public project.
READ = {"private": {"anonymous": 401, "non-member": 404, "member": "ok", "admin": "ok"},
        "public": {"anonymous": "ok", "non-member": "ok", "member": "ok", "admin": "ok"}}
MEMBERS_ONLY = {kind: {"anonymous": 401, "non-member": 404 if kind == "private" else 403, "member": "ok", "admin": "ok"}
                for kind in PROJECTS}
WRITE = {kind: {"anonymous": 401, "non-member": 403, "member": "ok", "admin": "ok"} for kind in PROJECTS}  # and grants
LOGIN_READ = {"private": READ["private"], "public": dict(READ["public"], anonymous=401)}  # operation endpoint

# (name, method, path below {p}, body, access, status of a success)
ROUTES = [
    ("GET {p}/", "GET", "", None, READ, 200),
    ("PUT {p}/", "PUT", "", {"description": "changed"}, WRITE, 200),
    ("GET {p}/{l}/", "GET", "r1/", None, READ, 200),
    ("PUT {p}/{l}/", "PUT", "r3/", {"label": "r3", "tags": ["t"]}, WRITE, 201),
    ("DELETE {p}/{l}/", "DELETE", "r1/", None, WRITE, 204),
    ("GET {p}/last/", "GET", "last/", None, READ, 200),
    ("GET {p}/tag/{t}/", "GET", "tag/t/", None, READ, 200),
    ("DELETE {p}/tag/{t}/", "DELETE", "tag/t/", None, WRITE, 200),
    ("GET {p}/tagged/{t}/", "GET", "tagged/t/", None, READ, 200),
    ("DELETE {p}/tagged/{t}/", "DELETE", "tagged/t/", None, WRITE, 200),
    ("GET {p}/permissions/", "GET", "permissions/", None, MEMBERS_ONLY, 200),
    ("POST {p}/permissions/", "POST", "permissions/", {"user": "bob"}, WRITE, 201),
]

# The operation endpoint's record and project operations: (op, params with P for the project, access).
OPERATIONS = [
    ("record_get", {"project": "P", "label": "r1"}, LOGIN_READ),
    ("record_list", {"project": "P"}, LOGIN_READ),
    ("record_labels", {"project": "P"}, LOGIN_READ),
    ("project_get", {"name": "P"}, LOGIN_READ),
    ("record_save", {"project": "P", "record": {"label": "r3"}}, WRITE),
    ("record_tag", {"project": "P", "label": "r1", "add": ["u"]}, WRITE),
    ("record_delete", {"project": "P", "label": "r1"}, WRITE),
    ("record_delete_by_tag", {"project": "P", "tag": "t"}, WRITE),
    ("project_save", {"name": "P", "description": "changed"}, WRITE),
    ("permission_list", {"project": "P"}, MEMBERS_ONLY),
    ("permission_grant", {"project": "P", "user": "bob"}, WRITE),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A DB directory with users ada (member of both projects), bob (of none) and lab (admin, of
    none), a private project Priv and a public project Pub, each with records r1 and r2 tagged t."""
    path = tmp_path_factory.mktemp("permissions") / "db"
    DBDirectory(path).init()
    with balsamdb.connect(path) as db:
        for name, password in PASSWORDS.items():
            db.call("user_save", name=name, password_hash=hash_password(password), admin=name == "lab")
        for kind, project in PROJECTS.items():
            db.projects.save(project, description="as made", public=kind == "public")
            db.call("permission_grant", project=project, user="ada")
            for label in ("r1", "r2"):
                db.records.save(project, {"label": label, "tags": ["t"]})
    return path


@pytest.fixture
def app_path(template, tmp_path):
    path = tmp_path / "db"
    shutil.copytree(template, path)
    return path


def _headers(role):
    user = ROLES[role]
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if user is not None:
        token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return headers


def snapshot(path):
    """Every row of every table but the record of applied request ids (a read has none)."""
    con = sqlite3.connect(f"file:{path / 'db.sqlite3'}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in con.execute("select name from sqlite_master where type = 'table' "
                                                "and name not like 'sqlite_%' and name != 'applied_request'")]
        return {table: sorted(map(repr, con.execute(f'select * from "{table}"'))) for table in tables}
    finally:
        con.close()


def _expect(access, kind, role, success):
    wanted = access[kind][role]
    return success if wanted == "ok" else wanted


def _check(path, send, expected, what):
    before = snapshot(path)
    status, body = send()
    assert status == expected, f"{what}: expected {expected}, got {status}: {body[:300]!r}"
    after = snapshot(path)
    if status >= 400:
        changed = [t for t in before if before[t] != after[t]]
        assert not changed, f"{what} was refused ({status}) but changed {changed}"
    return before, after


CASES = [(route, kind, role) for route in ROUTES for kind in PROJECTS for role in ROLES]


@pytest.mark.parametrize("route,kind,role", CASES,
                         ids=[f"{r[0]}-{k}-{role}" for r, k, role in CASES])
def test_sumatra_routes(app_path, route, kind, role):
    name, method, below, body, access, success = route
    client = create_app(app_path).test_client()
    project = PROJECTS[kind]
    expected = _expect(access, kind, role, success)

    def send():
        answer = client.open(f"/{project}/{below}", method=method, json=body, headers=_headers(role))
        return answer.status_code, answer.get_data()

    before, after = _check(app_path, send, expected, f"{role} {name} on a {kind} project")
    if method != "GET" and expected < 400:
        assert before != after, f"{role} {name}: allowed, but it changed nothing (a test that cannot fail)"


OP_CASES = [(op, kind, role) for op in OPERATIONS for kind in PROJECTS for role in ROLES]


@pytest.mark.parametrize("op,kind,role", OP_CASES, ids=[f"{o[0]}-{k}-{role}" for o, k, role in OP_CASES])
def test_operation_endpoint(app_path, op, kind, role):
    name, params, access = op
    client = create_app(app_path).test_client()
    project = PROJECTS[kind]
    params = {key: (project if value == "P" else value) for key, value in params.items()}
    expected = _expect(access, kind, role, 200)

    def send():
        answer = client.post("/_balsamdb/call", json={"id": f"permission-case-{name}", "op": name,
                                                      "params": params}, headers=_headers(role))
        return answer.status_code, answer.get_data()

    before, after = _check(app_path, send, expected, f"{role} {name} on a {kind} project")
    if name not in ("record_get", "record_list", "record_labels", "project_get", "permission_list") \
            and expected < 400:
        assert before != after, f"{role} {name}: allowed, but it changed nothing (a test that cannot fail)"


def test_project_list_shows_what_each_role_may_read(app_path):
    client = create_app(app_path).test_client()
    shown = {}
    for role in ROLES:
        answer = client.get("/", headers=_headers(role))
        shown[role] = answer.status_code if answer.status_code != 200 else sorted(p["name"] for p in answer.json)
    # An anonymous caller is asked to log in while something is hidden from them.
    assert shown == {"anonymous": 401, "non-member": ["Pub"], "member": ["Priv", "Pub"], "admin": ["Priv", "Pub"]}


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_the_same_answers_from_a_real_db_serve(served_dbdir, template, tmp_path, request):
    """A few of the cases through `db serve` and its write server (HTTP parsing, waitress, the
    server route), including bob granting himself a project."""
    with balsamdb.connect(served_dbdir) as db:
        for name, password in PASSWORDS.items():
            db.call("user_save", name=name, password_hash=hash_password(password), admin=name == "lab")
        db.projects.save("Priv", description="as made")
        db.call("permission_grant", project="Priv", user="ada")
        db.records.save("Priv", {"label": "r1", "tags": ["t"]})
    served = Served(served_dbdir, tmp_path)
    request.addfinalizer(served.stop)

    def ask(method, path, body=None, role="anonymous"):
        return served.request(method, path, body, headers=_headers(role)).status

    assert ask("POST", "Priv/permissions/", {"user": "bob"}, "non-member") == 403
    assert ask("POST", "Priv/permissions/", {"user": "bob"}) == 401
    assert ask("GET", "Priv/r1/", role="non-member") == 404
    assert ask("DELETE", "Priv/tag/t/", role="non-member") == 403
    assert ask("POST", "_balsamdb/call", {"id": "real-serve-grant-0001", "op": "permission_grant",
                                          "params": {"project": "Priv", "user": "bob"}}, "non-member") == 403
    with balsamdb.connect(served_dbdir) as db:
        assert db.call("permission_list", project="Priv") == ["ada"]
        assert db.records.labels("Priv") == ["r1"]
    assert ask("GET", "Priv/r1/", role="admin") == 200
    assert ask("POST", "Priv/permissions/", {"user": "bob"}, "member") == 201
    assert ask("GET", "Priv/r1/", role="non-member") == 200  # a member now
