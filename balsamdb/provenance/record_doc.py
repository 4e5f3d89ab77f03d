"""The Sumatra record document of a captured run: the dict ``smt`` sends (``record2dict``),
plus a ``balsamdb`` object that Sumatra ignores (the job, the exit status, notes, what was cut).

Labels (the documented rule, docs/provenance.md):

* ``YYYYmmdd-HHMMSS`` (the run's start in UTC, Sumatra's own label format), then
* ``_<first 8 characters of the job id>_r<run>`` for a job whose run number is known
  (the number of times it entered RUNNING, so a restarted job's runs differ), or
  ``_<first 8 of the job id>_p<pid>`` when the store could not say, or ``_p<pid>`` without a job.

Sizes: :func:`fit` cuts the big parts (program output, diff, dependencies, file lists) until
the document fits ``max_request_bytes`` with room for the request around it, and says what it
cut in the part itself and in ``balsamdb.cut``.
"""

import json

TIMESTAMP = "%Y-%m-%d %H:%M:%S%z"
ENVELOPE_ROOM = 16384
#: Parts that may be cut, with where they keep their content (the program output keeps its end).
TEXT_PARTS = {"stdout_stderr": "end", "diff": "start"}
LIST_PARTS = ("dependencies", "output_data", "input_data")


def make_label(started, job=None, pid=None):
    """The label of a run that started at ``started`` (an aware datetime), see the module doc."""
    from datetime import timezone

    label = started.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if job and job.get("id"):
        short = job["id"].replace("-", "")[:8]
        run = job.get("run")
        return f"{label}_{short}_r{run}" if isinstance(run, int) and run > 0 else f"{label}_{short}_p{pid}"
    return f"{label}_p{pid}"


def parameter_set(path):
    """Sumatra's ``parameters`` of the parameter file ``path`` (type by its extension), or of none."""
    if not path:
        return {"content": "{}", "type": "dict"}
    with open(path, encoding="utf-8", errors="replace") as handle:
        content = handle.read()
    lower = str(path).lower()
    kind = ("YAMLParameterSet" if lower.endswith((".yaml", ".yml")) else
            "JSONParameterSet" if lower.endswith(".json") else
            "ConfigParserParameterSet" if lower.endswith((".cfg", ".ini")) else "SimpleParameterSet")
    return {"content": content, "type": kind}


def build(run):
    """The record document of ``run`` (a :class:`balsamdb.provenance.capture.Run`)."""
    directory = run.working_directory
    state = {"type": "FileSystemDataStore", "parameters": {"root": directory}}
    extra = {"capture": run.kind, "exit_status": run.exit_status, "working_directory": directory,
             "command": run.command, "notes": [n for n in run.notes if n], "cut": []}
    if run.parameter_file:
        extra["parameter_file"] = run.parameter_file
    if run.job:
        extra["job"] = run.job
    return {
        "label": run.label,
        "timestamp": run.started.strftime(TIMESTAMP),
        "reason": run.reason or "",
        "duration": run.duration,
        "executable": run.executable,
        "repository": run.repository,
        "main_file": run.main_file or "",
        "version": run.version or "",
        "parameters": parameter_set(run.parameter_file),
        "input_data": run.inputs,
        "script_arguments": run.script_arguments or "",
        "launch_mode": {"type": "SerialLaunchMode", "parameters": {"working_directory": directory, "options": None}},
        "datastore": state,
        "input_datastore": state,
        "outcome": run.outcome or "",
        "stdout_stderr": run.output_tail or "",
        "output_data": run.outputs,
        "tags": sorted(set(run.tags)),
        "diff": run.diff or "",
        "user": run.user or "",
        "dependencies": run.dependencies,
        "platforms": [run.platform],
        "repeats": None,
        "balsamdb": extra,
    }


def _size(doc):
    return len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())


def cut_text(text, keep, where, what, why):
    """``text`` cut to about ``keep`` characters (its start or its end), with a marker line."""
    if len(text) <= keep:
        return text
    marker = f"[balsamdb: {len(text) - keep} of {len(text)} characters of the {what} cut ({why})]"
    if where == "end":
        return marker + "\n" + text[len(text) - keep:]
    return text[:keep] + "\n" + marker + "\n"


def fit(doc, max_request_bytes, caps=None):
    """Cut ``doc``'s big parts in place until it fits ``max_request_bytes`` (minus room for the
    request around it); first to ``caps`` (``{"stdout_stderr": chars, "diff": chars}``)."""
    cuts = doc.setdefault("balsamdb", {}).setdefault("cut", [])
    for part, keep in (caps or {}).items():
        text = doc.get(part) or ""
        if keep is not None and len(text) > keep:
            doc[part] = cut_text(text, keep, TEXT_PARTS[part], part, "over its cap")
            cuts.append(f"{part}: kept {keep} of {len(text)} characters (cap)")
    budget = max(max_request_bytes - ENVELOPE_ROOM, max_request_bytes // 2)
    while _size(doc) > budget:
        sizes = {part: len(json.dumps(doc.get(part) or "")) for part in (*TEXT_PARTS, *LIST_PARTS)}
        part = max(sizes, key=sizes.get)
        if sizes[part] <= 64:  # nothing big left to cut: the rest is what it is
            break
        value = doc[part]
        if part in TEXT_PARTS:
            keep = len(value) // 2
            doc[part] = cut_text(value, keep, TEXT_PARTS[part], part, "to fit max_request_bytes")
            cuts.append(f"{part}: kept {keep} of {len(value)} characters to fit max_request_bytes")
        else:
            keep = len(value) // 2
            doc[part] = value[:keep]
            cuts.append(f"{part}: kept {keep} of {len(value)} entries to fit max_request_bytes")
    return doc
