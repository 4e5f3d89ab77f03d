"""The endpoints of Sumatra's own stores (see :func:`.endpoints.open_store`), for projects and records only.

:class:`SumatraStore` is any server of the Sumatra Server API, read and written over HTTP (a
balsamdb HTTP store whose user is not an admin is one too); :class:`SumatraDjangoStore` is
Sumatra's Django record store on PostgreSQL, read once and never written.  Both have the methods of
every endpoint: ``counts()``, ``export()``, ``import_()``, ``digest()`` and ``close()``.
"""

import json
import time
from urllib.parse import quote, unquote, urlsplit

from ..exceptions import TransferError
from ..operations import sort_time
from ..operations.stores import canonical, item_key
from .paging import PAGE, digest_pages


class SumatraStore:
    """Any server of the Sumatra Server API: projects and records only."""

    kinds = ("project", "record")
    limits = "a Sumatra record store holds projects and records only"
    keeps_versions = False  # it keeps the current version of each record only
    versions = False

    def __init__(self, base, user, password, name):
        import urllib3

        self.base, self.name = base, name
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if user is not None:
            self._headers.update(urllib3.make_headers(basic_auth=f"{user}:{password or ''}"))
        self._http = urllib3.PoolManager(maxsize=4, timeout=urllib3.Timeout(connect=5, read=120), retries=3)
        self._records = None

    def _get(self, url):
        response = self._request("GET", url)
        if response.status != 200:
            raise TransferError(f"GET {url} answered HTTP {response.status}: {response.data[:200]!r}")
        try:
            return json.loads(response.data)
        except ValueError:
            raise TransferError(f"GET {url} did not answer JSON: is {self.name} a Sumatra record store?") from None

    def _request(self, method, url, body=None):
        import urllib3

        try:
            return self._http.request(method, url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise TransferError(f"{method} {url}: {exc}") from None

    def _project_url(self, name):
        return f"{self.base}{quote(name, safe='')}/"

    def _projects(self):
        data = self._get(self.base)
        entries = data if isinstance(data, list) else data.get("projects", [])
        return sorted((p.get("id") or p.get("name")) for p in entries if isinstance(p, dict))

    def _listing(self):
        """Every (project, label) the server lists now, sorted: labels come from the record
        URIs, which are never fetched as given (the password goes only to the base URL)."""
        keys = []
        for project in self._projects():
            marker = f"/{project}/"
            for uri in self._get(self._project_url(project)).get("records", []):
                path = unquote(urlsplit(str(uri)).path)
                if marker in path:
                    keys.append((project, path.split(marker, 1)[1].rstrip("/")))
        return sorted(keys)

    def _record_url(self, project, label):
        return f"{self._project_url(project)}{quote(label, safe='')}/"

    def counts(self):
        return {"project": len(self._projects()), "record": len(self._listing())}

    def export(self, kind, after=None, limit=PAGE, since=None):
        now = time.time()
        if kind == "project":
            items = []
            for name in self._projects():
                info = self._get(self._project_url(name))
                items.append({"kind": "project", "name": name, "description": info.get("description") or "",
                              "public": bool(info.get("public", False)), "created_at": None})
            items = [i for i in items if after is None or item_key(i) > after]
            return {"items": items, "next": None, "now": now}
        if kind != "record":
            return {"items": [], "next": None, "now": now}

        if after is None or self._records is None:
            self._records = self._listing()  # listed afresh by every pass: new records are seen
        keys = [k for k in self._records if after is None or list(k) > after]
        items = []
        for project, label in keys[:limit]:
            document = self._get(self._record_url(project, label))
            when = sort_time(document.get("timestamp"))
            items.append({"kind": "record", "project": project, "label": document.get("label", label),
                          "document": document, "created_at": when, "updated_at": when})
        return {"items": items, "next": list(keys[limit - 1]) if len(keys) > limit else None, "now": now}

    def import_(self, items, dry_run=False):
        counts = {"added": 0, "updated": 0, "unchanged": 0}
        for item in items:
            if item["kind"] == "project":
                url = self._project_url(item["name"])
                exists = self._request("GET", url).status == 200
                if not dry_run:
                    body = json.dumps({"name": item["name"], "description": item["description"],
                                       "public": item["public"]}).encode()
                    answer = self._request("PUT", url, body)
                    if answer.status not in (200, 201):
                        raise TransferError(f"PUT {url} answered HTTP {answer.status}: {answer.data[:200]!r}")
                counts["unchanged" if exists else "added"] += 1
            elif item["kind"] == "record":
                url = self._record_url(item["project"], item["label"])
                old = self._request("GET", url)
                same = old.status == 200 and canonical(json.loads(old.data)) == canonical(item["document"])
                if not dry_run and not same:
                    answer = self._request("PUT", url, json.dumps(item["document"]).encode())
                    if answer.status not in (200, 201):
                        raise TransferError(f"PUT {url} answered HTTP {answer.status}: {answer.data[:200]!r}")
                counts["unchanged" if same else "updated" if old.status == 200 else "added"] += 1
        self._records = None
        return counts

    def digest(self, until=None, exclude=None):
        return digest_pages(self, until, exclude)

    def close(self):
        self._http.clear()


class SumatraDjangoStore:
    """Sumatra's own Django record store on PostgreSQL (``smt init --store=postgres://...``), a
    source of projects and records, read once with plain SQL (see :mod:`balsamdb.sumatra_django`;
    no Django needed): each record as ``smt`` would send it to an HTTP store."""

    kinds = ("project", "record")
    limits = "a Sumatra record store holds projects and records only"
    keeps_versions = False
    versions = False

    def __init__(self, url, name):
        from ..dbdir import parse_postgres_url
        from ..sumatra_django import read_postgres

        self.name = name
        projects, records = read_postgres(parse_postgres_url(url), name)
        self._records = []
        for project, document in records:
            when = sort_time(document.get("timestamp"))
            self._records.append({"kind": "record", "project": project, "label": document["label"],
                                  "document": document, "created_at": when, "updated_at": when})
        self._records.sort(key=item_key)
        self._projects = [{"kind": "project", "name": p["name"], "description": p["description"], "public": False,
                           "created_at": None} for p in projects]
        self._projects.sort(key=item_key)

    def counts(self):
        return {"project": len(self._projects), "record": len(self._records)}

    def export(self, kind, after=None, limit=PAGE, since=None):
        items = {"project": self._projects, "record": self._records}.get(kind, [])
        items = [i for i in items if (after is None or item_key(i) > after)
                 and (since is None or kind != "record" or i["updated_at"] >= since)]
        page = items[:limit]
        return {"items": page, "next": item_key(page[-1]) if len(items) > limit else None, "now": time.time()}

    def import_(self, items, dry_run=False):
        raise TransferError(f"{self.name} is Sumatra's own record store: balsamdb reads it, never writes it")

    def digest(self, until=None, exclude=None):
        return digest_pages(self, until, exclude)

    def close(self):
        pass
