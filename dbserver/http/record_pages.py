"""A project's records for people: find (search, tags, sort, pages) and compare, at ``{base}{p}/``.

The HTML page of a project always pages (:data:`PER_PAGE` records) and takes ``?search=``,
``?tags=a,b`` (records with any of them, as in the Sumatra Server API), ``?sort=COLUMN`` (``-COLUMN``
descending; reason, outcome and main file by their first 100 characters) and the page's position
(``?after=``/``?before=`` a key, ``?last=1``, an old ``?page=N``).  JSON answers are searched, sorted
or paged only when those parameters are given, so that ``smt`` (which reads the whole list, newest
first) sees exactly what it always saw: :func:`takes_over` leaves every other request to the Sumatra
API's own view.

``?compare=l1,l2[,...]`` shows records side by side with their differences (parameters line by
line, code version and diff, dependencies, platform, arguments, inputs and outputs, duration and
outcome); its JSON gives the differences as data.  A query parameter, so that no label collides.
Reads go to the read-only connections of :mod:`.reads`, never through the write server.
"""

import json
from urllib.parse import quote
from urllib.parse import urlencode

import flask
import peewee as pw

from balsamdb import schema_records_sort, schema_scale

from balsamdb.models import Record, RecordTag
from balsamdb.server.http import keyset

PER_PAGE = 50
COUNT_LIMIT = 10_000  # matches counted at most, when paged
RARE_TAG = 2_000      # a tag on fewer records is read from the tag's side (see find_records)
MAX_COMPARED = 10
LIST_PARAMS = ("search", "sort", "page", "after", "before", "last", "compare")
SEARCHED = (Record.label, Record.reason, Record.outcome, Record.main_file, Record.version, Record.user)
#: ``?sort=`` name -> column; ``timestamp`` sorts by the time it names, not its text
SORTABLE = {"label": Record.label, "timestamp": Record.sort_time, "reason": Record.reason,
            "outcome": Record.outcome, "duration": Record.duration, "main_file": Record.main_file,
            "version": Record.version, "user": Record.user}
#: the columns of the HTML list: (key, heading)
COLUMNS = (("label", "label"), ("timestamp", "timestamp"), ("reason", "reason"), ("outcome", "outcome"),
           ("duration", "duration"), ("main_file", "main file"), ("version", "version"), ("user", "user"),
           ("tags", "tags"))
HIDDEN_BY_DEFAULT = ("main_file", "version", "user")


def takes_over(request):
    """True when this page answers ``GET {p}/`` (a browser, or a find/compare parameter)."""
    return flask.g.get("format") == "html" or any(key in request.args for key in LIST_PARAMS)


def project_page(web, name):
    """The answer to ``GET {p}/`` for a browser, or for ``?search/sort/page/compare`` (see module doc)."""
    project = web.readable_project(name)
    args = flask.request.args
    if "compare" in args:
        return _compare_page(web, name, _compare_labels(web, args))
    html = flask.g.get("format") == "html"
    tags = [t.strip() for t in (args.get("tags") or "").split(",") if t.strip()]
    search = (args.get("search") or "").strip()
    sort = _sort(web, args.get("sort"))
    paged = html or any(key in args for key in ("page", "after", "before", "last"))
    try:
        at = keyset.position(args, int) if paged else None
        if at is not None:
            _order(sort).check(at)
    except ValueError as exc:
        raise web.error(400, str(exc)) from None
    listing = web.reader.query(lambda db: find_records(db, name, search, tags, sort, at))
    base = flask.request.url_root
    info = {k: v for k, v in project.items() if k not in ("records", "name")}
    data = dict({"id": name, "name": name}, **info, tags=tags, search=search, sort=sort, count=listing["count"],
                more=listing["more"], page=listing["page"], pages=listing["pages"], per_page=PER_PAGE if paged else None,
                next=listing["next"], previous=listing["previous"],
                records=[f"{base}{web.url_part(name)}/{web.url_part(r['label'])}/" for r in listing["rows"]])
    if not paged:
        for key in ("page", "pages", "per_page", "next", "previous", "more"):
            del data[key]
    keep = [(k, v) for k, v in args.items(multi=True) if k not in keyset.PARAMS + ("format", "compare")]
    return web.respond(data, "records.html", name, project=name, info=project, listing=listing, search=search,
                       tags=tags, sort=sort, columns=COLUMNS, hidden=HIDDEN_BY_DEFAULT, keep=keep,
                       pager=keyset.pager([(k, v) for k, v in args.items(multi=True)
                                           if k not in keyset.PARAMS + ("format",)], listing),
                       sort_link=lambda column: _sort_link(args, sort, column),
                       json_link=_with(args, format="json"),
                       tag_link=lambda tag: _with(args, tags=tag, **NO_POSITION),
                       without_tag=lambda tag: _with(args, tags=",".join(t for t in tags if t != tag) or None,
                                                     **NO_POSITION))


# -- finding ------------------------------------------------------------------------------------------

def _sort(web, text):
    text = (text or "").strip()
    if not text:
        return ""
    column = text.lstrip("-")
    if column not in SORTABLE:
        raise web.error(400, f"cannot sort by {column!r}; sort by one of {', '.join(SORTABLE)} "
                             "(-COLUMN for descending)")
    return text


def search_index(db, search):
    """A condition on ``Record.id`` that the search index answers (a superset of the records
    holding ``search``), or None when there is no index or ``search`` is too short (3 characters)."""
    if len(search) < 3:
        return None
    if isinstance(db, pw.PostgresqlDatabase):
        if not schema_scale.postgres_search_ready(db):
            return None
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return pw.SQL(schema_scale.search_text_sql() + " LIKE %s", [f"%{escaped}%"])
    if not schema_scale.has_table(db, schema_scale.FTS):
        return None
    phrase = '"' + search.replace('"', '""') + '"'
    return Record.id.in_(pw.SQL(f'(SELECT rowid FROM "{schema_scale.FTS}" WHERE "{schema_scale.FTS}" MATCH ?)',
                                [phrase]))


def find_records(db, project, search="", tags=(), sort="", at=None):
    """The records of ``project`` matching ``search`` (a substring of label, reason, outcome, main
    file, version or user; any case) having any of ``tags``, sorted by ``sort`` (a column of
    :data:`SORTABLE`, ``-`` for descending; newest first by default), the page of :data:`PER_PAGE`
    at ``at`` (:func:`.keyset.position`; all records when None).  Returns ``{count, page, pages,
    first, rows, next, previous, next_at, previous_at}`` (see :func:`.keyset.read`); each row holds
    the columns and the tags (documents are not read)."""
    indexed = search_index(db, search) if search else None
    rare_tags = bool(tags) and _rare(db, tags)
    project_column = Record.project
    if (indexed is not None or rare_tags) and not isinstance(db, pw.PostgresqlDatabase):
        # SQLite: "+project" keeps the planner from walking every record of the project; the few
        # candidates of the search index or of rare tags are looked up by id instead.
        project_column = pw.NodeList((pw.SQL("+"), Record.project), glue="")
    query = Record.select().where(project_column == project)
    if search:
        query = query.where(pw.reduce(lambda a, b: a | b, [column.contains(search) for column in SEARCHED]))
        if indexed is not None:  # the candidates from the search index; the condition above stays exact
            query = query.where(indexed)
    if tags:
        tagged = RecordTag.select(RecordTag.record).where(RecordTag.tag.in_(list(tags)))
        # A common tag: each record, read in order, is looked up in (record, tag) until the page is full,
        # rather than a list of every tagged record made first (a third of a million for one tag in three)
        query = query.where(Record.id.in_(tagged) if rare_tags else
                            pw.fn.EXISTS(tagged.where(RecordTag.record == Record.id)))
    # Counted up to COUNT_LIMIT when paged (a page reads what it shows; counting a million matches
    # would take longer than the page): "of more than 10,000"
    counted = query.select(Record.id).limit(COUNT_LIMIT + 1)
    if indexed is None and not rare_tags:  # walked in saved order (project, time, id): a tag's lookups in id
        counted = counted.order_by(Record.sort_time, Record.id)  # order (a sort's index: random, 41 against 12 ms)
    count = query.count(db) if at is None else pw.Select([counted.alias("n")], [pw.fn.COUNT(pw.SQL("*"))]).scalar(db)
    order = _order(sort)
    rows_query = query.select(Record.id, Record.label, Record.timestamp, Record.sort_time, Record.reason,
                              Record.outcome, Record.duration, Record.main_file, Record.version, Record.user,
                              order.column.alias("sort_key"))
    if at is None:
        rows = list(rows_query.order_by(*order.order_by()).dicts().execute(db))
        links, numbers = {"next": None, "previous": None, "next_at": None, "previous_at": None}, {}
    else:
        rows, links = keyset.read(db, rows_query, order, PER_PAGE, at, ("sort_key", "id"))
        numbers = keyset.numbering(at, None if count > COUNT_LIMIT else count, PER_PAGE)
    tags_of = {}
    if rows and at is not None:
        tag_rows = (RecordTag.select(RecordTag.record, RecordTag.tag)
                    .where(RecordTag.record.in_([r["id"] for r in rows])).order_by(RecordTag.tag))
        for record_id, tag in tag_rows.tuples().execute(db):
            tags_of.setdefault(record_id, []).append(tag)
    for row in rows:
        row["tags"] = tags_of.get(row.pop("id"), [])
        del row["sort_time"], row["sort_key"]
    return {"count": min(count, COUNT_LIMIT), "more": count > COUNT_LIMIT, "page": numbers.get("page"),
            "pages": numbers.get("pages"), "first": numbers.get("first"), "rows": rows, **links}


def _rare(db, tags):
    """True when the records carrying any of ``tags`` (in any project) are fewer than :data:`RARE_TAG`."""
    few = RecordTag.select(RecordTag.record).where(RecordTag.tag.in_(list(tags))).limit(RARE_TAG)
    return few.count(db) < RARE_TAG


def _order(sort):
    """The :class:`.keyset.Order` of ``?sort=`` (newest first without one)."""
    if not sort:
        return keyset.Order(Record.sort_time, Record.id)
    column = SORTABLE[sort.lstrip("-")]
    # the expression that the column's index holds (schema 12: a long text by its first characters)
    return keyset.Order(schema_records_sort.sort_key(column), Record.id, descending=sort.startswith("-"),
                        nullable=column.null)


def _with(args, **changes):
    """The query string of ``args`` with ``changes`` (None removes a parameter)."""
    pairs = [(k, v) for k, v in args.items(multi=True) if k not in changes and k != "format"]
    pairs += [(k, str(v)) for k, v in changes.items() if v is not None]
    return "?" + urlencode(pairs)


#: a link to another listing starts at its first page
NO_POSITION = {name: None for name in keyset.PARAMS}


def _sort_link(args, sort, column):
    """Sorting by ``column``: ascending first, descending when it is already ascending."""
    return _with(args, sort=f"-{column}" if sort == column else column, **NO_POSITION)


# -- comparing ----------------------------------------------------------------------------------------

def _compare_labels(web, args):
    labels = []
    for value in args.getlist("compare"):
        for label in value.split(","):
            if label.strip() and label.strip() not in labels:
                labels.append(label.strip())
    if not 2 <= len(labels) <= MAX_COMPARED:
        raise web.error(400, f"compare 2 to {MAX_COMPARED} records: ?compare=label1,label2 (got {len(labels)})")
    return labels


def _compare_page(web, name, labels):
    def read(db):
        query = Record.select(Record.label, Record.document).where(
            (Record.project == name) & Record.label.in_(labels))
        return {label: json.loads(document) for label, document in query.tuples().execute(db)}

    documents = web.reader.query(read)
    missing = [label for label in labels if label not in documents]
    if missing:
        raise web.error(404, f"no record {', '.join(map(repr, missing))} in project {name!r}")
    docs = [documents[label] for label in labels]
    base = flask.request.url_root
    links = [f"{base}{web.url_part(name)}/{web.url_part(label)}/" for label in labels]
    return _compared(web, name, docs, labels, links, f"?compare={quote(','.join(labels))}&format=json",
                     {"labels": labels, "records": links})


def compare_versions_page(web, name, label, numbers, read_version):
    """``GET {p}/{l}/?versions&compare=1,3``: versions of one record side by side, as records are
    compared (``read_version(n)`` gives version n's document, through the store's checks)."""
    if not 2 <= len(numbers) <= MAX_COMPARED:
        raise web.error(400, f"compare 2 to {MAX_COMPARED} versions: ?versions&compare=1,2 (got {len(numbers)})")
    docs = [read_version(n) for n in numbers]
    base = flask.request.url_root
    record = f"{base}{web.url_part(name)}/{web.url_part(label)}/"
    titles = [f"version {n}" for n in numbers]
    links = [f"{record}?version={n}" for n in numbers]
    return _compared(web, name, docs, titles, links,
                     f"?versions&compare={','.join(map(str, numbers))}&format=json",
                     {"label": label, "versions": numbers, "records": links})


def _compared(web, name, docs, titles, links, json_href, data):
    rows = compare(docs)
    data = {"project": name, **data,
            "differences": [{"section": r["section"], "name": r["name"], "values": r["values"]}
                            for r in rows if r["differs"]],
            "identical": [f"{r['section']}: {r['name']}" for r in rows if not r["differs"]]}
    sections = []
    for row in rows:
        if not sections or sections[-1]["name"] != row["section"]:
            sections.append({"name": row["section"], "rows": [], "differing": 0})
        sections[-1]["rows"].append(row)
        sections[-1]["differing"] += row["differs"]
    return web.respond(data, "compare.html", f"{name}: compare", project=name, labels=titles, sections=sections,
                       columns=[{"title": t, "href": h} for t, h in zip(titles, links)], json_href=json_href,
                       kind="versions" if "versions" in data else "records",
                       differing=len(data["differences"]))


def _text(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def parameter_lines(parameters):
    """``{name: value}`` of a Sumatra parameter set (``{"content": text, "type": ...}``): JSON is
    flattened to dotted names; other text is read line by line as ``name = value`` or
    ``name: value`` (``[section]`` lines prefix the names), other lines by their number."""
    content = parameters.get("content") if isinstance(parameters, dict) else parameters
    if content is None or content == "":
        return {}
    if isinstance(content, dict):
        value = content
    else:
        try:
            value = json.loads(content)
        except (TypeError, ValueError):
            value = None
    if isinstance(value, dict):
        flat = {}

        def walk(prefix, item):
            if isinstance(item, dict) and item:
                for key, sub in item.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), sub)
            else:
                flat[prefix] = _text(item)
        walk("", value)
        return flat
    lines, section = {}, ""
    for number, line in enumerate(str(content).splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip() + "."
            continue
        cut = min((i for i in (stripped.find("="), stripped.find(":")) if i > 0), default=-1)
        if cut > 0:
            lines[section + stripped[:cut].strip()] = stripped[cut + 1:].strip()
        else:
            lines[f"line {number}"] = stripped
    return lines


def _by_key(items, key, value):
    """``{item[key]: value(item)}`` of a list of objects (dependencies, data files)."""
    out = {}
    for item in items or []:
        if isinstance(item, dict):
            out[_text(item.get(key))] = value(item)
        else:
            out[_text(item)] = ""
    return out


def _platforms(doc):
    out = {}
    platforms = doc.get("platforms") or []
    for i, platform in enumerate(platforms if isinstance(platforms, list) else [platforms]):
        prefix = f"#{i + 1} " if len(platforms) > 1 else ""
        if isinstance(platform, dict):
            for key, value in sorted(platform.items()):
                out[prefix + key] = _text(value)
        else:
            out[prefix.strip() or "platform"] = _text(platform)
    return out


def _executable(doc):
    executable = doc.get("executable")
    if isinstance(executable, dict):
        return " ".join(_text(executable.get(k)) for k in ("name", "version", "path") if executable.get(k))
    return _text(executable)


def _repository(doc):
    repository = doc.get("repository")
    return _text(repository.get("url")) if isinstance(repository, dict) else _text(repository)


def _launch_mode(doc):
    mode = doc.get("launch_mode")
    if isinstance(mode, dict):
        return " ".join(_text(mode.get(k)) for k in ("type", "parameters") if mode.get(k))
    return _text(mode)


def _duration(doc):
    value = doc.get("duration")
    return f"{value:.2f} s" if isinstance(value, (int, float)) and not isinstance(value, bool) else _text(value)


#: (section, {name: function(document) -> str}) in the order the comparison shows them
FIELDS = (
    ("outcome", {"outcome": lambda d: _text(d.get("outcome")), "duration": _duration,
                 "reason": lambda d: _text(d.get("reason")), "timestamp": lambda d: _text(d.get("timestamp")),
                 "user": lambda d: _text(d.get("user")), "tags": lambda d: ", ".join(map(_text, d.get("tags") or []))}),
    ("code", {"main file": lambda d: _text(d.get("main_file")), "version": lambda d: _text(d.get("version")),
              "diff": lambda d: _text(d.get("diff")), "repository": _repository, "executable": _executable,
              "arguments": lambda d: _text(d.get("script_arguments")), "launch mode": _launch_mode}),
)
#: (section, function(document) -> {name: str}): sections whose rows depend on the records
KEYED = (
    ("parameters", lambda d: parameter_lines(d.get("parameters"))),
    ("dependencies", lambda d: _by_key(d.get("dependencies"), "name", lambda i: _text(i.get("version")))),
    ("platform", _platforms),
    ("inputs", lambda d: _by_key(d.get("input_data"), "path", lambda i: _text(i.get("digest")))),
    ("outputs", lambda d: _by_key(d.get("output_data"), "path", lambda i: _text(i.get("digest")))),
)
ABSENT = None  # a parameter, dependency or file that one record has and another has not


def compare(docs):
    """Rows ``{section, name, values, differs}`` comparing record documents ``docs`` (two or more):
    fixed fields first, then parameters, dependencies, platform, inputs and outputs by name (a
    name that a record lacks has the value None there)."""
    rows = []
    for section, fields in FIELDS:
        for name, read in fields.items():
            values = [read(doc) for doc in docs]
            rows.append({"section": section, "name": name, "values": values,
                         "differs": any(v != values[0] for v in values)})
    for section, read in KEYED:
        per_doc = [read(doc) for doc in docs]
        names = []
        for mapping in per_doc:
            names.extend(n for n in mapping if n not in names)
        for name in names:
            values = [mapping.get(name, ABSENT) for mapping in per_doc]
            rows.append({"section": section, "name": name, "values": values,
                         "differs": any(v != values[0] for v in values)})
    return rows
