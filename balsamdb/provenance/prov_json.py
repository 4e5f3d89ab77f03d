"""W3C PROV-JSON of a :class:`~.selection.Selection`, built with the ``prov`` package (the
``export`` extra).

The mapping (docs/provenance.md):

* each record is an **activity** ``run:<project>/<label>`` (start and end time, exit status,
  command line, outcome);
* each input and output file is an **entity**, named by its content when it has a SHA-256
  (``sha256:<hex>``, so a file one run produced and another used is one entity) and by
  record and path otherwise; the code version is an entity ``code:<commit>`` (``prov:Plan``
  is the job: ``job:<id>``);
* the user is a ``prov:Person`` agent, the executable a ``prov:SoftwareAgent`` acting on the
  user's behalf;
* ``used`` (run, input), ``wasGeneratedBy`` (output, run), ``wasAssociatedWith`` (run, user;
  run, software with the job as plan), ``wasDerivedFrom`` (each output from each input of its run).
"""

from datetime import timedelta
from urllib.parse import quote

from .selection import record_time

NAMESPACE = "urn:balsamdb:ns:"


def _q(text):
    return quote(str(text), safe="-_.~")


def document(selection):
    """The ``prov.model.ProvDocument`` of ``selection``."""
    from prov.model import PROV_TYPE, ProvDocument

    doc = ProvDocument()
    doc.add_namespace("balsamdb", NAMESPACE)
    for prefix in ("run", "file", "code", "job", "user", "software", "sha256"):
        doc.add_namespace(prefix, f"urn:balsamdb:{prefix}:")
    for job in selection.jobs.values():
        doc.entity(f"job:{_q(job['id'])}", {PROV_TYPE: "prov:Plan", "prov:label": job.get("name") or job["id"],
                                          "balsamdb:workflow": job.get("workflow") or "",
                                          "balsamdb:state": job.get("state") or ""})
    made = {}  # entities and agents by id: each is stated once (a file shared by runs, one user)
    for project, record in selection.records:
        _add_run(doc, made, project, record)
    return doc


def _once(made, ident, make):
    if ident not in made:
        made[ident] = make()
    return made[ident]


def _file_entity(doc, made, project, label, key):
    meta = key.get("metadata") if isinstance(key.get("metadata"), dict) else {}
    sha = meta.get("sha256")
    ident = f"sha256:{sha}" if sha else f"file:{_q(project)}/{_q(label)}/{_q(key['path'])}"
    attributes = {"prov:label": key["path"], "prov:location": key["path"]}
    if sha:
        attributes["balsamdb:sha256"] = sha
    if isinstance(meta.get("size"), int):
        attributes["balsamdb:size"] = meta["size"]
    return _once(made, ident, lambda: doc.entity(ident, attributes))


def _add_run(doc, made, project, record):
    from prov.model import PROV_TYPE

    label = record["label"]
    extra = record.get("balsamdb") if isinstance(record.get("balsamdb"), dict) else {}
    start = record_time(record.get("timestamp"))
    duration = record.get("duration")
    end = start + timedelta(seconds=duration) if start and isinstance(duration, (int, float)) else None
    attributes = {"prov:label": f"{project}/{label}", "balsamdb:project": project,
                  "balsamdb:main_file": record.get("main_file") or "",
                  "balsamdb:code_version": record.get("version") or "", "balsamdb:code_modified": bool(record.get("diff")),
                  "balsamdb:outcome": record.get("outcome") or "",
                  "balsamdb:command": " ".join(extra.get("command") or []) or record.get("script_arguments") or ""}
    if extra.get("exit_status") is not None:
        attributes["balsamdb:exit_status"] = extra["exit_status"]
    run = doc.activity(f"run:{_q(project)}/{_q(label)}", start, end, attributes)
    who = record.get("user") or "unknown"
    user = _once(made, f"user:{_q(who)}",
                 lambda: doc.agent(f"user:{_q(who)}", {PROV_TYPE: "prov:Person", "prov:label": who}))
    exe = record.get("executable") or {}
    ident = f"software:{_q(exe.get('name') or 'program')}-{_q(exe.get('version') or 'unknown')}"
    software = _once(made, ident, lambda: doc.agent(ident, {
        PROV_TYPE: "prov:SoftwareAgent", "prov:label": exe.get("name") or "", "balsamdb:path": exe.get("path") or "",
        "balsamdb:version": exe.get("version") or ""}))
    doc.wasAssociatedWith(run, user)
    job = extra.get("job") if isinstance(extra.get("job"), dict) else None
    plan = f"job:{_q(job['id'])}" if job and job.get("id") else None
    doc.wasAssociatedWith(run, software, plan)
    doc.actedOnBehalfOf(software, user, run)
    repository = record.get("repository") or {}
    if record.get("version"):
        ident = f"code:{_q(record['version'])}"
        code = _once(made, ident, lambda: doc.entity(ident, {"prov:label": record["version"],
                                                            "balsamdb:repository": repository.get("url") or ""}))
        doc.used(run, code)
    inputs = [_file_entity(doc, made, project, label, key) for key in record.get("input_data") or []
              if isinstance(key, dict) and key.get("path")]
    for entity in inputs:
        doc.used(run, entity)
    for key in record.get("output_data") or []:
        if not isinstance(key, dict) or not key.get("path"):
            continue
        entity = _file_entity(doc, made, project, label, key)
        doc.wasGeneratedBy(entity, run, end)
        for source in inputs:
            if source.identifier != entity.identifier:
                doc.wasDerivedFrom(entity, source, run)


def to_json(selection, indent=2):
    """The PROV-JSON text of ``selection``."""
    return document(selection).serialize(format="json", indent=indent)
