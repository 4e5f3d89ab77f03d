"""The HTTP store in this process: ``balsamdb.connect("http://...")``'s own client (retries, answers,
errors) sending its requests through Flask's test client to the store's real application, with no
socket and no `db serve` process.  One more route of the shared API tests (tests/test_api.py) that
runs in seconds; tests/test_remote.py keeps the real process."""

from types import SimpleNamespace
from urllib.parse import urlsplit

ADMIN, ADMIN_PW = "lab", "lab admin pw"


class FlaskTransport:
    """What :class:`balsamdb.remote.RemoteDatabase` needs of a urllib3 pool (``request``, ``clear``),
    answered by a Flask test client."""

    def __init__(self, client):
        self.client = client

    def request(self, method, url, body=None, headers=None, preload_content=True):
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        response = self.client.open(path, method=method, data=body, headers=dict(headers or {}))
        return SimpleNamespace(status=response.status_code, data=response.get_data(), headers=response.headers)

    def clear(self):
        pass


def connect_in_process(dbdir, spool_dir):
    """A :class:`RemoteDatabase` on the HTTP store of SQLite DB directory ``dbdir``, served in this
    process, logged in as an admin (made here)."""
    import balsamdb
    from balsamdb.passwords import hash_password
    from balsamdb.remote import RemoteDatabase
    from balsamdb.server.http import create_app
    from balsamdb.settings import load_settings

    with balsamdb.connect(dbdir) as local:
        local.users.save(ADMIN, password_hash=hash_password(ADMIN_PW), admin=True)
    settings = load_settings(remote_spool_dir=str(spool_dir), client_deadline=10)
    return RemoteDatabase(f"http://{ADMIN}:{ADMIN_PW}@localhost/", settings,
                          http=FlaskTransport(create_app(dbdir).test_client()))
