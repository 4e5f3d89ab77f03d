"""An RO-Crate of a :class:`~.selection.Selection` following the Process Run Crate profile,
built with the ``rocrate`` package (the ``export`` extra).

Each record is a ``CreateAction`` (start and end time, ``actionStatus``, the exit status and
outcome in ``description``/``error``) whose ``instrument`` is the ``SoftwareApplication`` it ran,
``agent`` the ``Person``, ``object`` the input files and ``result`` the outputs.  Files are
referenced by their absolute ``file://`` URL (not copied) unless ``with_files``: then they are
copied into ``files/<project>/<label>/`` in the crate when they still have the recorded SHA-256.
Each file carries its ``sha256`` and ``contentSize``.  The jobs are ``HowTo``-less context
entities (``balsamdb:Job``) named in each action's ``description``.
"""

import hashlib
import os
from datetime import timedelta
from pathlib import Path

from .selection import record_time

PROFILE = "https://w3id.org/ro/wfrun/process/0.5"
PROFILE_NAME = "Process Run Crate"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(selection, with_files=False):
    """The ``rocrate.rocrate.ROCrate`` of ``selection`` (not written yet) and a list of notes
    (files not copied, and why)."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    crate = ROCrate()
    crate.name = f"balsamdb records of {selection.scope} {selection.name}"
    crate.description = (f"Provenance of {len(selection.records)} run(s) captured by balsamdb "
                         f"(db run --record / balsamdb.capture), {selection.scope} {selection.name}")
    profile = crate.add(ContextEntity(crate, PROFILE, properties={"@type": "CreativeWork", "name": PROFILE_NAME,
                                                                   "version": "0.5"}))
    crate.root_dataset["conformsTo"] = profile
    notes = []
    for project, record in selection.records:
        _add_action(crate, ContextEntity, project, record, with_files, notes, selection.jobs)
    return crate, notes


def _entity(crate, make, ident, properties):
    found = crate.get(ident)
    return found if found is not None else crate.add(make(crate, ident, properties=properties))


def _file(crate, project, record, key, with_files, notes):
    meta = key.get("metadata") if isinstance(key.get("metadata"), dict) else {}
    root = ((record.get("balsamdb") or {}).get("working_directory")
            or ((record.get("datastore") or {}).get("parameters") or {}).get("root") or "/")
    path = key["path"] if os.path.isabs(key["path"]) else os.path.join(root, key["path"])
    properties = {"name": key["path"]}
    if meta.get("sha256"):
        properties["sha256"] = meta["sha256"]
    if isinstance(meta.get("size"), int):
        properties["contentSize"] = str(meta["size"])
    if meta.get("mimetype"):
        properties["encodingFormat"] = meta["mimetype"]
    if with_files:
        dest = f"files/{project}/{record['label']}/{key['path'].lstrip('/')}"
        found = crate.get(dest)
        if found is not None:
            return found
        if os.path.isfile(path) and (not meta.get("sha256") or _sha256(path) == meta["sha256"]):
            return crate.add_file(path, dest_path=dest, properties=properties)
        notes.append(f"{path}: not copied ({'gone' if not os.path.isfile(path) else 'changed since the run'}); "
                     "referenced instead")
    url = Path(path).absolute().as_uri()
    found = crate.get(url)
    return found if found is not None else crate.add_file(url, fetch_remote=False, properties=properties)


def _add_action(crate, make, project, record, with_files, notes, jobs):
    extra = record.get("balsamdb") if isinstance(record.get("balsamdb"), dict) else {}
    exe = record.get("executable") or {}
    app_id = f"#software-{exe.get('name') or 'program'}-{exe.get('version') or 'unknown'}"
    instrument = _entity(crate, make, app_id, {"@type": "SoftwareApplication", "name": exe.get("name") or "",
                                               "softwareVersion": exe.get("version") or "",
                                               "identifier": exe.get("path") or ""})
    who = record.get("user") or "unknown"
    agent = _entity(crate, make, f"#person-{who}", {"@type": "Person", "name": who})
    start = record_time(record.get("timestamp"))
    duration = record.get("duration")
    end = start + timedelta(seconds=duration) if start and isinstance(duration, (int, float)) else None
    status = extra.get("exit_status")
    failed = status not in (None, 0)
    description = [f"record {record['label']} of project {project}"]
    job = extra.get("job") if isinstance(extra.get("job"), dict) else None
    properties = {"@type": "CreateAction", "name": f"{project}/{record['label']}",
                  "actionStatus": "http://schema.org/FailedActionStatus" if failed
                  else "http://schema.org/CompletedActionStatus"}
    if start:
        properties["startTime"] = start.isoformat()
    if end:
        properties["endTime"] = end.isoformat()
    if failed:
        properties["error"] = record.get("outcome") or f"exit status {status}"
    if job and job.get("id"):
        known = jobs.get(job["id"], job)
        job_entity = _entity(crate, make, f"#job-{job['id']}", {"@type": "Thing", "name": known.get("name") or job["id"],
                                                               "identifier": job["id"],
                                                               "description": f"balsamdb job in workflow "
                                                                              f"{known.get('workflow') or '?'}"})
        properties["isPartOf"] = {"@id": job_entity.id}
        description.append(f"run {job.get('run') or '?'} of job {job['id']}")
    if record.get("version"):
        description.append(f"code {record.get('repository', {}).get('url') or ''} at {record['version']}"
                           + (" with local changes" if record.get("diff") else ""))
    command = " ".join(extra.get("command") or [])
    if command:
        description.append(f"command: {command}")
    properties["description"] = "; ".join(description)
    inputs = [_file(crate, project, record, key, with_files, notes) for key in record.get("input_data") or []
              if isinstance(key, dict) and key.get("path")]
    outputs = [_file(crate, project, record, key, with_files, notes) for key in record.get("output_data") or []
               if isinstance(key, dict) and key.get("path")]
    action = crate.add_action(instrument, identifier=f"#run-{project}-{record['label']}", object=inputs or None,
                              result=outputs or None, properties=properties)
    action["agent"] = agent
    return action


def write(selection, directory, with_files=False):
    """Write the crate of ``selection`` into ``directory`` (made; must be empty or new); returns the notes."""
    crate, notes = build(selection, with_files)
    crate.write(directory)
    return notes
