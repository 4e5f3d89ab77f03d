"""The Sumatra Server API (see the module docs of :mod:`balsamdb.server.http`)."""

import json
import logging
import re
import time

import flask
from flask import g, request

from balsamdb.server.http import pages, record_pages
from balsamdb.server.http.access import (may_use, may_write_before_body, readable_project, require_user,
                                         writable_project)
from balsamdb.server.http.errors import HTTPError, challenge
from balsamdb.server.http.html import (HTML_OUTPUT_CHARS, HTML_RECORD_LIMIT, PROJECT, PROJECTS, RECORD, VERSIONS,
                                       record_fields, record_files, record_job, url_part)
from balsamdb.server.http import reads as page_reads
from balsamdb.server.http.replies import json_body, project_url, reply, tags_param
from balsamdb.server.http.state import state
from balsamdb.server.http.urls import RESERVED_LABELS, RESERVED_PREFIXES

log = logging.getLogger("balsamdb.server.http")

#: a label that url_part leaves as it is (most): tested at a fraction of the cost of quoting it
QUOTED_ALREADY = re.compile(r"[A-Za-z0-9/:|@!$'()*+,;=\-._~]*").fullmatch

SAVED_AT, SAVED_BY = "Balsamdb-Saved-At", "Balsamdb-Saved-By"  # sent by db relay (see relayed_save)


bp = flask.Blueprint("sumatra", __name__)


@bp.get("/")
def project_list():
    projects = state().store.projects()  # a read-only read, as for the permission checks
    mine = set(g.user["projects"]) if g.user else set()
    admin = bool(g.user and g.user.get("admin"))
    visible = [p for p in projects if admin or p["public"] or p["name"] in mine]
    if g.user is None and len(visible) < len(projects):
        raise challenge("log in to see every project you may use")
    return reply(_project_entries(visible),
                 html=lambda: ("Projects", PROJECTS, {"projects": visible, "message": None, "admin": admin,
                                                      "record_counts": state().store.record_counts()}))


def _project_entries(projects):
    return [{"id": p["name"], "name": p["name"], "description": p["description"], "public": p["public"],
             "uri": project_url(p["name"])} for p in projects]


@bp.route("/<project>/", methods=["GET", "PUT"])
def project_view(project):
    if request.method == "PUT":
        return put_project(project)
    if record_pages.takes_over(request):  # the HTML page, and ?search, ?sort, ?page, ?compare
        return record_pages.project_page(pages.web(), project)
    return project_listing(project, tags_param())


def project_listing(name, tags):
    """The project and its records; with ``tags``, the records having any of them (the
    Sumatra Server API's meaning of ``?tags=a,b``).  JSON is streamed (:func:`streamed_listing`)."""
    project = readable_project(name)
    info = {"id": name, "name": name, "description": project["description"], "public": project["public"],
            "write_once": project["write_once"], "created_at": project["created_at"], "tags": tags}
    if g.format != "html":
        return streamed_listing(name, tags, info)
    labels = state().store.listing(name, tags)

    def html():
        records = state().store.listing(name, tags, limit=HTML_RECORD_LIMIT, documents=True)
        return name, PROJECT, {"project": name, "info": project, "records": records, "total": len(labels),
                                "tags": tags}
    return reply(dict(info, records=[f"{project_url(name)}{url_part(label)}/" for label in labels]), html=html)


def streamed_listing(name, tags, info):
    """The JSON of the project listing, ``info`` with ``"records"``: the URL of every record, newest
    first, written as it is read, a page of :data:`~.reads.LABEL_PAGE` labels at a time (each page one
    short read, from where the previous ended), so that a million records take no more memory than
    a page.  The bytes are those of ``json.dumps(listing, ensure_ascii=False)``, which smt's client
    reads.  The first page is read before the answer starts, so that a store that cannot be read
    answers with an error status; a read that fails later cuts the answer short (not valid JSON:
    the client sees an error, never a shorter list).  What a listing read in pages sees of writes
    made meanwhile: docs/http.md, "Paging"."""
    reader = state().store.reader
    prefix = f"{project_url(name)}"
    size = page_reads.LABEL_PAGE
    first = reader.query(lambda database: page_reads.read_label_page(database, name, tags, limit=size))
    head = json.dumps(info, ensure_ascii=False)[:-1] + ', "records": ['

    def body():
        rows, separator = first, ""
        yield head.encode()
        while rows:
            urls = [prefix + (label if QUOTED_ALREADY(label) else url_part(label)) + "/" for _t, _id, label in rows]
            chunk = separator + json.dumps(urls, ensure_ascii=False)[1:-1]  # the items as the whole list has them
            separator = ", "
            yield chunk.encode()
            if len(rows) < size:
                break
            after = rows[-1][:2]
            rows = reader.query(lambda database: page_reads.read_label_page(database, name, tags, after, size))
        yield b"]}"

    return flask.Response(body(), 200, content_type=g.content_type)


def put_project(name):
    may_write_before_body(name)  # the login and the permission before the body is read
    body = json_body("project")
    description, public, write_once = body.get("description"), body.get("public"), body.get("write_once")
    for flag, value in (("public", public), ("write_once", write_once)):
        if value is not None and not isinstance(value, bool):
            raise HTTPError(400, f"{flag} must be true or false")
    if description is not None and not isinstance(description, str):
        raise HTTPError(400, "description must be a string")
    settings = {"description": description, "public": public, "write_once": write_once}
    existing = writable_project(name, create=True)
    if existing is None:  # made by this request (or by a racing one a moment ago)
        if any(v is not None for v in settings.values()):
            state().store.write("project_save", name=name, **settings)
        status = 201
    else:
        changes = any(v is not None and v != existing[k] for k, v in settings.items())
        if changes:
            state().store.write("project_save", name=name, **settings)
            status = 200
        else:
            young = time.time() - existing["created_at"] < state().create_window
            status = 201 if young or not state().store.listing(name, limit=1) else 200
    project = state().store.project(name)
    return reply({"id": name, "name": name, "description": project["description"],
                  "public": project["public"], "write_once": project["write_once"],
                  "created_at": project["created_at"]}, status)


@bp.route("/<project>/<path:label>/", methods=["GET", "PUT", "DELETE", "POST"])
def below_project(project, label):
    method = "GET" if request.method == "HEAD" else request.method
    if method == "PUT" and (label in RESERVED_LABELS or label.startswith(RESERVED_PREFIXES)):
        raise HTTPError(400, f"the label {label!r} names a part of the API "
                             f"({', '.join(RESERVED_LABELS + RESERVED_PREFIXES)}); use another label")
    for start in RESERVED_PREFIXES:  # {p}/tag/{t}/ and {p}/tagged/{t}/
        if label.startswith(start):
            return tagged(project, label[len(start):], method)
    if label == "last":
        allow(method, "GET")
        readable_project(project)
        newest = state().store.listing(project, limit=1, documents=True)
        if not newest:
            raise HTTPError(404, f"project {project!r} has no records")
        return record_reply(project, newest[0])
    if label == "permissions":
        return permissions(project, method)
    allow(method, "GET", "PUT", "DELETE")
    if method == "GET":
        readable_project(project)
        if "versions" in request.args:
            return versions_reply(project, label)
        version = request.args.get("version")
        if version is not None:
            if not version.isdigit() or int(version) < 1:
                raise HTTPError(400, f"version must be a number from 1, not {version!r} (see ?versions)")
            doc = state().store.record(project, label, int(version))
            return record_reply(project, doc, int(version))
        return record_reply(project, state().store.record(project, label))
    if method == "PUT":
        return put_record(project, label)
    writable_project(project)
    state().store.write("record_delete", project=project, label=label)
    return flask.Response(status=204)


def allow(method, *methods):
    if method not in methods:
        raise HTTPError(405, f"{method} is not allowed here; use {', '.join(methods)}",
                        {"Allow": ", ".join(methods)})


def versions_reply(project, label):
    if request.args.get("compare"):  # ?versions&compare=1,3: two or more versions side by side
        numbers = []
        for value in request.args.getlist("compare"):
            for part in value.split(","):
                if not part.strip().isdigit() or int(part) < 1:
                    raise HTTPError(400, f"compare takes version numbers from 1, not {part!r} (see ?versions)")
                if int(part) not in numbers:
                    numbers.append(int(part))
        return record_pages.compare_versions_page(
            pages.web(), project, label, numbers,
            lambda n: state().store.record(project, label, n))
    versions = state().store.versions(project, label)
    return reply({"project": project, "label": label, "versions": versions},
                 html=lambda: (f"{label}: versions", VERSIONS, {"project": project, "label": label,
                                                                  "versions": versions}))


def record_reply(project, doc, version=None):
    def html():
        output = str(doc.get("stdout_stderr") or "")
        if len(output) > HTML_OUTPUT_CHARS:
            output = output[:HTML_OUTPUT_CHARS] + f"\n... ({len(output) - HTML_OUTPUT_CHARS} more characters: " \
                                                  "see the JSON)"
        return str(doc.get("label")), RECORD, {"project": project, "r": doc, "output": output,
                                                "fields": record_fields(doc), "version": version,
                                                "files": record_files(doc), "job": record_job(doc)}
    return reply(doc, html=html)


def put_record(project, label):
    may_write_before_body(project)  # the login and the permission before the body is read
    record = json_body("record")
    if record.get("label") != label:
        raise HTTPError(400, f"the record's label {record.get('label')!r} differs from the label in the "
                             f"URL {label!r}")
    writable_project(project, create=True)
    saved_at, saved_by = relayed_save()
    created = state().store.write("record_save", project=project, record=record, saved_by=saved_by,
                          saved_at=saved_at)["created"]
    return reply({"project": project, "label": label, "created": created}, 201 if created else 200)


def relayed_save():
    """(saved_at, saved_by) of a save: ``db relay`` sends, with a save it forwards later, when it
    answered it (``Balsamdb-Saved-At``, UNIX seconds; honoured from every writer, never later
    than now) and for whom (``Balsamdb-Saved-By``; kept as is from an admin, else after the
    name of the user who logged in: nobody makes a version look saved by someone else)."""
    saved_by = g.user["name"]
    saved_at = request.headers.get(SAVED_AT)
    if saved_at is not None:
        try:
            saved_at = float(saved_at)
        except ValueError:
            saved_at = -1.0
        if not 0 < saved_at < float("inf"):
            raise HTTPError(400, f"{SAVED_AT} must be a time in UNIX seconds")
    claimed = request.headers.get(SAVED_BY, "").strip()[:100]
    if claimed:
        saved_by = claimed if g.user.get("admin") else f"{saved_by} for {claimed}"
    return saved_at, saved_by


def tagged(project, tag, method):
    allow(method, "GET", "DELETE")
    if not tag:
        raise HTTPError(404, "give a tag: {project}/tag/{tag}/")
    if method == "DELETE":
        writable_project(project)
        deleted = state().store.write("record_delete_by_tag", project=project, tag=tag)["deleted"]
        return flask.Response(str(deleted), 200, content_type="text/plain; charset=utf-8")
    return project_listing(project, [tag])


def permissions(project, method):
    allow(method, "GET", "POST")
    if method == "POST":
        writable_project(project)  # before the body is read
        user = json_body("permission").get("user")
        if not isinstance(user, str) or not user:
            raise HTTPError(400, 'give the user to grant as {"user": "name"}')
        granted = state().store.write("permission_grant", project=project, user=user)["granted"]
        users = state().store.permissions(project)
        return reply({"project": project, "users": users, "granted": granted}, 201 if granted else 200)
    readable_project(project)
    if not may_use(project):
        require_user()
        raise HTTPError(403, f"only users of project {project!r} may see who they are")
    return reply({"project": project, "users": state().store.permissions(project)})
