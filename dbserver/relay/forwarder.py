"""The relay's way to its record store: :class:`Upstream` (any server of the Sumatra Server API)
and :class:`Forwarder`, the thread that sends the spooled saves to it in their order (see
:mod:`balsamdb.server.relay.app`)."""

import json
import logging
import threading
from urllib.parse import quote

from balsamdb.backoff import delay_after
from balsamdb.remote import redact, split_url

log = logging.getLogger("balsamdb.server.relay.app")

MAX_BACKOFF = 10.0
STORE_TIMEOUT = 30.0


class StoreDown(Exception):
    pass


class Upstream:
    """The record store the relay forwards to (any server of the Sumatra Server API)."""

    def __init__(self, url):
        import urllib3

        self.base, user, password = split_url(url)
        self.name = redact(url)
        self.headers = {"Accept": "application/json"}
        if user is not None:
            self.headers.update(urllib3.make_headers(basic_auth=f"{user}:{password or ''}"))
        self.http = urllib3.PoolManager(maxsize=8, timeout=urllib3.Timeout(connect=5, read=STORE_TIMEOUT),
                                        retries=False)

    def request(self, method, path, body=None, content_type=None, extra=None):
        """(status, bytes) of one request to ``{base}{path}``; StoreDown when unreachable."""
        import urllib3

        headers = dict(self.headers, **(extra or {}))
        if content_type:
            headers["Content-Type"] = content_type
        try:
            response = self.http.request(method, self.base + path, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreDown(str(exc)) from None
        if response.status >= 500 or response.status in (408, 429):  # try again later
            raise StoreDown(f"HTTP {response.status}")
        return response.status, response.data


def store_path(project, label=None):
    return quote(project, safe="") + "/" + ("" if label is None else quote(label, safe="") + "/")


class Forwarder(threading.Thread):
    """Sends the spooled saves to the store, oldest first, until stopped."""

    def __init__(self, spool, cache, upstream):
        super().__init__(name="forwarder", daemon=True)
        self.spool, self.cache, self.upstream = spool, cache, upstream
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.forwarded, self.failed = 0, 0
        self.store_up = True
        self.known_projects = set()

    def run(self):
        failures = 0
        while not self.stopping.is_set():
            item = self.spool.oldest()
            if item is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self.forward(*item)
                failures, self.store_up = 0, True
            except StoreDown as exc:
                if self.store_up:
                    log.warning("the store %s is unreachable (%s): saves wait in the spool", self.upstream.name, exc)
                self.store_up = False
                self.stopping.wait(delay_after(failures, 0.2, MAX_BACKOFF))  # wait-ok: retry interval while the store is down
                failures += 1
            except Exception:  # a full disk, an odd answer: the save stays in the spool, the thread goes on
                log.exception("forwarding save %s failed; it stays in the spool and is tried again", item[0])
                self.stopping.wait(delay_after(failures, 0.2, MAX_BACKOFF))  # wait-ok: retry interval after an unexpected failure
                failures += 1

    def forward(self, seq, project, label, document):
        if project not in self.known_projects:
            status, _ = self.upstream.request("GET", store_path(project))
            if status == 404 or status == 401:
                status, body = self.upstream.request("PUT", store_path(project), b"{}", "application/json")
                if status not in (200, 201):
                    log.error("the store refused to create project %r: HTTP %s %s", project, status, body[:200])
            self.known_projects.add(project)
        body = json.dumps(document, ensure_ascii=False).encode()
        saved_at, saved_by = self.spool.saved_of(seq)
        extra = {} if saved_at is None else {"Balsamdb-Saved-At": repr(saved_at)}  # the store keeps it as the
        if saved_by:  # version's time and author (see relayed_save in balsamdb.server.http.sumatra_api)
            extra["Balsamdb-Saved-By"] = saved_by
        status, answer = self.upstream.request("PUT", store_path(project, label), body,
                                               "application/vnd.sumatra.record-v4+json", extra)
        if status in (200, 201, 202):  # 202: a balsamdb store keeps it in its own spool, durably
            try:
                self.cache.put(project, label, document)
            except OSError as exc:  # the copy for reads while the store is down; the save itself is stored
                log.warning("could not keep a copy of %r in %r in the cache: %s", label, project, exc)
            self.forwarded += 1
        else:  # refused for good (400, 401, 403, 409, 413): kept aside, never retried in a loop
            failed = self.spool.new.parent / "failed"
            failed.mkdir(mode=0o700, exist_ok=True)
            (failed / f"{seq:012d}.json").write_text(json.dumps(
                {"project": project, "label": label, "status": status, "answer": answer[:1000].decode("utf-8", "replace"),
                 "document": document}, ensure_ascii=False))
            self.failed += 1
            log.error("the store refused the save of %r in %r: HTTP %s %s (kept in %s)", label, project, status,
                      answer[:200], failed)
        self.spool.done(seq)
