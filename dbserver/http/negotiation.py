"""Content negotiation: JSON (or a Sumatra media type) or HTML, from ``?format=`` or ``Accept``."""

import re

from balsamdb.server.http.errors import HTTPError

SUMATRA_MEDIA_TYPE = re.compile(r"application/vnd\.sumatra\.[a-z-]+-v\d+\+json")


def negotiate(request):
    """("json" | "html", Content-Type of the answer), from ?format= or Accept; HTTPError 406."""
    wanted = request.args.get("format")
    if wanted is not None:
        if wanted.lower() == "json":
            return "json", "application/json"
        if wanted.lower() == "html":
            return "html", "text/html; charset=utf-8"
        raise HTTPError(406, f"unknown format {wanted!r}: use ?format=json or ?format=html")
    if not request.headers.get("Accept", "").strip():
        return "json", "application/json"
    accept = request.accept_mimetypes
    best = accept.best_match(["application/json", "text/html"])
    for value, quality in accept:  # highest quality first
        if quality > 0 and SUMATRA_MEDIA_TYPE.fullmatch(value) and quality >= accept.quality(best or "x/x"):
            return "json", value  # the client named a Sumatra media type: answer in it
    if best == "text/html":
        return "html", "text/html; charset=utf-8"
    if best == "application/json":
        return "json", "application/json"
    raise HTTPError(406, "this store answers application/json (or a Sumatra media type) and text/html; "
                         f"the request accepts only {request.headers.get('Accept')!r}")
