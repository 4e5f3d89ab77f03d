"""Keyset paging for the web pages of ``db serve``: the ``?after=`` and ``?before=`` of their links.

A page of a listing ends with the sort key of its last row (its value in the sorted column, then
its id); the next page is the rows just after that key, found through the index that orders them,
never by skipping rows with OFFSET: page 20,000 costs what page 1 costs.  ``?before=`` (the first
row's key) is the page before, read backwards and turned round.  A key travels in the URL as
compact JSON (``[1733560000.5,"4f0c..."]``): numbers, text and null keep their type.

What a reader sees while rows are written (as for the client's paged listings,
:mod:`balsamdb.operations.pages`): each page is one read; a row whose sort key does not change is
listed exactly once however many rows are added or changed around it; a row whose key changes
between two pages (a job changing state moves to the top of the jobs page) may be listed twice or not
at all.

Old ``?page=N`` links keep working (see :func:`offset_of`): they mean the N-th page of the order
as the database holds it at that moment, read with OFFSET once; every link on that page is a key.
"""

import json

import peewee as pw


class Order:
    """The order of a listing: ``column`` (``descending`` or not), then ``tiebreak`` (a unique
    column) in the same direction, so that one index on (column) or (..., column, id) reads it either
    way.  ``nullable``: the column holds NULLs, which sort as the smallest value (as SQLite's
    indexes hold them; said explicitly for PostgreSQL).  :meth:`after` and :meth:`before` are the
    conditions of the rows after and before a key ``[value, tiebreak]``."""

    def __init__(self, column, tiebreak, descending=True, nullable=False):
        self.column, self.tiebreak, self.descending, self.nullable = column, tiebreak, descending, nullable

    def check(self, at):
        """ValueError when the key of position ``at`` (:func:`position`) holds a value that this order's
        column cannot hold: a number for a column of numbers, text for one of text (a link made by
        hand; PostgreSQL refuses to compare the two, which was an error of the server)."""
        for key in (at.get("after"), at.get("before")):
            if key is None or key[0] is None:
                continue
            numeric = isinstance(self.column, (pw.IntegerField, pw.FloatField))
            if numeric != isinstance(key[0], (int, float)):
                raise ValueError(f"{encode(key)} is not the key of a page of this order (follow the page's links)")

    def reversed(self):
        return Order(self.column, self.tiebreak, not self.descending, self.nullable)

    def order_by(self):
        if self.descending:
            first = self.column.desc(nulls="LAST") if self.nullable else self.column.desc()
            return [first, self.tiebreak.desc()]
        first = self.column.asc(nulls="FIRST") if self.nullable else self.column.asc()
        return [first, self.tiebreak.asc()]

    def after(self, key):
        """The rows after ``key`` in this order."""
        value, last = key
        column, tiebreak = self.column, self.tiebreak
        if self.descending:
            if value is None:  # a NULL key: only NULLs come after it (NULLs are smallest)
                return column.is_null() & (tiebreak < last)
            # "column <= value" first: the column's index answers the range, the rest is checked on it
            condition = (column <= value) & ((column < value) | (tiebreak < last))
            return (condition | column.is_null()) if self.nullable else condition
        if value is None:
            return column.is_null(False) | (column.is_null() & (tiebreak > last))
        return (column >= value) & ((column > value) | (tiebreak > last))

    def before(self, key):
        """The rows before ``key`` in this order (the rows after it in the reverse order)."""
        return self.reversed().after(key)

    def after_parts(self, key):
        """The rows after ``key`` as conditions on disjoint parts of the order, each one range of the
        column's index, in order: the rows of the key's value past its tiebreak, then the values past
        it (then the NULLs, descending).  :meth:`after` as one condition is no range when the key's value
        is shared by many rows (a user's 300,000 records: the read walked them from the value's first
        row) or the column holds NULLs (``OR ... IS NULL``: the read walked the index from its end).
        Each part is ``(condition, order_by)``: the rows of one value are ordered by the tiebreak alone
        (SQLite sorted them when the column is an expression, though it is one value)."""
        value, last = key
        column, tiebreak = self.column, self.tiebreak
        past = (tiebreak < last) if self.descending else (tiebreak > last)
        by_tiebreak = [tiebreak.desc() if self.descending else tiebreak.asc()]
        if value is None:
            same = (column.is_null() & past, by_tiebreak)
            return [same] if self.descending else [same, (column.is_null(False), self.order_by())]
        parts = [((column == value) & past, by_tiebreak),
                 ((column < value) if self.descending else (column > value), self.order_by())]
        return parts + [(column.is_null(), by_tiebreak)] if self.descending and self.nullable else parts


def encode(key):
    """``key`` as it goes into a URL parameter (urlencode quotes it)."""
    return json.dumps(key, separators=(",", ":"), ensure_ascii=False)


def decode(text, tiebreak_type):
    """The key of a ``?after=``/``?before=`` parameter; ValueError when it is not one (a link made by
    hand or cut short): ``[value, tiebreak]`` with value a number, text or null and the tiebreak of
    ``tiebreak_type`` (int or str)."""
    try:
        key = json.loads(text)
    except ValueError:
        raise ValueError(f"{text!r} is not the key of a page (follow the page's links)") from None
    if (not isinstance(key, list) or len(key) != 2
            or not (key[0] is None or isinstance(key[0], (int, float, str))) or isinstance(key[0], bool)
            or not isinstance(key[1], tiebreak_type) or isinstance(key[1], bool)):
        raise ValueError(f"{text!r} is not the key of a page (follow the page's links)")
    return key


def offset_of(page, per_page):
    """The rows before page ``page`` (from 1) of ``per_page``: an old ``?page=N`` link."""
    return (page - 1) * per_page


def page_of(database, query, order, per_page, after=None, before=None, offset=0, last=False):
    """One page of ``query`` (peewee select, its rows as dicts) in ``order``: the rows just after
    key ``after``, or just before key ``before``, or the last ``per_page`` rows (``last``: the first
    of the reverse order, from the same index), or (none) the rows from ``offset``.  Returns
    ``(rows, has_next, has_previous)``: whether rows come after the last and before the first (read
    as one more row each way, not counted)."""
    if before is not None or last:
        rows = (_parts(database, query, order.reversed(), before, per_page + 1) if before is not None else
                list(query.order_by(*order.reversed().order_by()).limit(per_page + 1).dicts().execute(database)))
        has_previous = len(rows) > per_page
        return list(reversed(rows[:per_page])), not last, has_previous
    if after is not None:
        rows = _parts(database, query, order, after, per_page + 1)
    else:
        query = query.offset(offset) if offset else query
        rows = list(query.order_by(*order.order_by()).limit(per_page + 1).dicts().execute(database))
    return rows[:per_page], len(rows) > per_page, after is not None or offset > 0


def _parts(database, query, order, key, limit):
    """The first ``limit`` rows of ``query`` after ``key`` in ``order``, read part by part
    (:meth:`Order.after_parts`) until there are enough."""
    rows = []
    for part, order_by in order.after_parts(key):
        rows += query.where(part).order_by(*order_by).limit(limit - len(rows)).dicts().execute(database)
        if len(rows) >= limit:
            break
    return rows


#: the query parameters of a page's position
PARAMS = ("after", "before", "last", "page", "at")


def _number(args, name):
    text = args.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a number from 1, not {text!r}")
    return int(text)


def position(args, tiebreak_type):
    """Where a page starts, from the request's ``args``: ``{"after": key}``, ``{"before": key}``,
    ``{"last": True}`` (``?last=1``) or ``{"page": N}`` (1 without any), with ``"at"``: the number of its
    first row when known (from 1; carried in the links only to say "rows 51–100": the rows read never
    depend on it).
    ValueError for a parameter that is none of these."""
    at = _number(args, "at")
    for direction in ("after", "before"):
        if args.get(direction):
            return {direction: decode(args[direction], tiebreak_type), "at": at}
    if args.get("last"):
        return {"last": True}
    return {"page": _number(args, "page") or 1}


def read(database, query, order, per_page, at, key_names):
    """The rows of the page at ``at`` (:func:`position`) of ``query`` in ``order`` and its links:
    ``(rows, {"next": key text or None, "previous": key text or None, "next_at", "previous_at"})``
    (``key_names``: the names of the order's column and tiebreak in the rows)."""
    offset = (at["page"] - 1) * per_page if "page" in at else 0
    rows, more_after, more_before = page_of(database, query, order, per_page, at.get("after"), at.get("before"),
                                            offset, at.get("last", False))
    first = _first(at, per_page)
    links = {"next": None, "previous": None, "next_at": None, "previous_at": None}
    if rows and more_after:
        links["next"] = encode([rows[-1][key_names[0]], rows[-1][key_names[1]]])
        links["next_at"] = first + len(rows) if first is not None else None
    if rows and more_before:
        links["previous"] = encode([rows[0][key_names[0]], rows[0][key_names[1]]])
        links["previous_at"] = max(1, first - per_page) if first is not None else None
    return rows, links


def _first(at, per_page):
    """The number of the page's first row (from 1), when known."""
    if "page" in at:
        return (at["page"] - 1) * per_page + 1
    return at.get("at")


def numbering(at, total, per_page):
    """``{"first", "page", "pages"}`` of the page at ``at`` among ``total`` rows (None: not counted
    whole): the number of its first row (from 1), of the page and of pages, each None when not known
    (a key without ``at``)."""
    first = _first(at, per_page)
    pages = None if total is None else max(1, -(-total // per_page))
    page = None if first is None else (first - 1) // per_page + 1
    return {"first": first, "page": page if pages is None or page is None else min(pages, page), "pages": pages}


def pager(kept, links):
    """The hrefs of a page's pager (``?...``): ``{"first", "previous", "next", "last"}``, each None when
    there is no such page; ``kept``: the query's other parameters as (name, value) pairs, ``links`` as
    :func:`read` made them."""
    from urllib.parse import urlencode

    def href(*pairs):
        return "?" + urlencode(list(kept) + [(k, str(v)) for k, v in pairs if v is not None])

    return {"first": href() if links["previous"] else None,
            "previous": href(("before", links["previous"]), ("at", links["previous_at"])) if links["previous"] else None,
            "next": href(("after", links["next"]), ("at", links["next_at"])) if links["next"] else None,
            "last": href(("last", 1)) if links["next"] else None}
