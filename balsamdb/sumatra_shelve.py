"""Read Sumatra's shelve record store without running any of its code.

A shelve file holds pickled Sumatra objects; :mod:`balsamdb.inert_pickle` unpickles them into inert
stand-ins (no class a pickle names is ever built, so none of Sumatra's constructors runs), and
:func:`record_document` turns a record's stand-in into the JSON document that Sumatra's own
``serialization.encode_record`` makes of the real object.  Neither Sumatra nor Django is needed.
"""

import json
import pickle

from .exceptions import TransferError
from .inert_pickle import Inert, Refused, short, unpickle

MAX_DEPTH = 200  # how deeply plain values may nest in a record (Sumatra's are a few levels)

# The name Sumatra's executables carry as a class attribute, for a pickle whose state lacks it.
EXECUTABLE_NAMES = {"PythonExecutable": "Python", "MatlabExecutable": "Matlab", "RExecutable": "R",
                    "NESTSimulator": "NEST", "NEURONSimulator": "NEURON", "GENESISSimulator": "GENESIS"}



# -- from stand-ins to Sumatra's JSON document ------------------------------------------------------

def _class_name(obj):
    return obj.global_name.rsplit(".", 1)[-1]


def _stand_in(obj, what, module_prefix="sumatra."):
    """``obj``, checked to be a stand-in of a class of ``module_prefix`` built the way pickle
    rebuilds an object (never by calling its class)."""
    if not isinstance(obj, Inert):
        raise Refused(f"{what} is {type(obj).__name__} {short(obj)}, not a Sumatra object")
    if not obj.global_name.startswith(module_prefix):
        raise Refused(f"{what} is a {obj.global_name}, which a Sumatra record never holds")
    if obj._inert["called"]:
        raise Refused(f"{what} is made by calling {obj.global_name}(...), which smt never stores: "
                      "refused (a crafted store?)")
    return obj


def _state(obj, what, module_prefix="sumatra."):
    """The attributes a stand-in was given (its pickled ``__dict__`` or ``__getstate__``)."""
    _stand_in(obj, what, module_prefix)
    state = obj._inert["state"]
    if state is None:
        return {}
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
        merged = {}
        for part in state:
            if part is not None:
                merged.update(_plain_dict(part, what))
        return merged
    return _plain_dict(state, what)


def _plain_dict(value, what):
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Refused(f"the state of {what} is {type(value).__name__}, not a dict of attributes")
    return value


def plain(value, what, depth=0):
    """``value`` as JSON data (dict, list, str, number, bool, None); anything else is refused."""
    if depth > MAX_DEPTH:
        raise Refused(f"{what} nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, what, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise Refused(f"{what} has a key of type {type(key).__name__}")
            out[key if isinstance(key, str) else json.dumps(key)] = plain(item, what, depth + 1)
        return out
    if isinstance(value, Inert):
        raise Refused(f"{what} holds a {value.global_name}, where smt stores plain values")
    raise Refused(f"{what} holds a {type(value).__name__}, where smt stores plain values")


def _time(value, what, timestamp_format):
    import datetime

    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        raise Refused(f"{what} is {type(value).__name__}, not a time")
    return value.strftime(timestamp_format)


def _parameters_text(obj, what):
    """``(type, str(parameter set))`` as Sumatra's ``record2dict`` gives them."""
    if isinstance(obj, dict):  # a record made with parameters={}: str() of the dict
        return "dict", repr(plain(obj, what))
    kind = _class_name(_stand_in(obj, what))
    if kind == "NTParameterSet":
        return kind, repr(_nt_items(obj, what))
    state = _state(obj, what)
    if kind == "SimpleParameterSet":
        values, comments = _plain_dict(state.get("_values", {}), what), state.get("comments") or {}
        lines = []
        for name, value in values.items():
            plain(value, what)
            lines.append(f'{name} = "{value}"' if isinstance(value, str) else f"{name} = {value}")
            if name in comments:
                lines[-1] += f" #{comments[name]}"
        return kind, "\n".join(lines)
    if kind == "JSONParameterSet":
        return kind, json.dumps(plain(state.get("_values", {}), what), sort_keys=True, indent=4)
    if kind == "YAMLParameterSet":
        try:
            import yaml
        except ImportError:
            raise Refused(f"{what} is a YAML parameter set, and reading it needs PyYAML (pip install pyyaml)") from None
        return kind, yaml.dump(plain(state.get("_values", {}), what), indent=4)
    if kind == "ConfigParserParameterSet":
        return kind, _config_text(state, what)
    raise Refused(f"{what} is a {obj.global_name}, a kind of parameter set that cannot be read without running it")


def _nt_items(obj, what, depth=0):
    """An NTParameterSet (a dict of the ``parameters`` package) as the plain dict its str() shows."""
    if depth > MAX_DEPTH:
        raise Refused(f"{what} nests deeper than {MAX_DEPTH} levels")
    out = {}
    for key, value in obj._inert["items"].items():
        if isinstance(value, Inert) and value.global_name in ("parameters.ParameterSet",
                                                              "sumatra.parameters.NTParameterSet"):
            out[key] = _nt_items(_stand_in(value, what, "parameters" if value.global_name.startswith("p")
                                           else "sumatra."), what, depth + 1)
        else:
            out[key] = plain(value, what, depth + 1)
    return out


def _config_text(state, what):
    """What ``ConfigParser.write`` writes for the pickled sections (Sumatra's str() of the set)."""
    delimiters = state.get("_delimiters") or ("=",)
    delimiter = f" {delimiters[0]} "
    allow_no_value = bool(state.get("_allow_no_value"))
    out = []

    def section(name, items):
        out.append(f"[{name}]\n")
        for key, value in _plain_dict(items, what).items():
            if value is not None or not allow_no_value:
                value = delimiter + str(plain(value, what)).replace("\n", "\n\t")
            else:
                value = ""
            out.append(f"{key}{value}\n")
        out.append("\n")

    defaults = state.get("_defaults") or {}
    if defaults:
        section(state.get("default_section", "DEFAULT"), defaults)
    for name, items in _plain_dict(state.get("_sections") or {}, what).items():
        section(name, items)
    return "".join(out)


def _data_keys(keys, what, timestamp_format):
    if not isinstance(keys, (list, tuple)):
        raise Refused(f"{what} is {type(keys).__name__}, not a list")
    out = []
    for key in keys:
        state = _state(key, what)
        out.append({"path": plain(state.get("path"), what), "digest": plain(state.get("digest"), what),
                    "metadata": plain(state.get("metadata", {}), what),
                    "creation": _time(state.get("creation"), what, timestamp_format)})
    return out


def _component(obj, what):
    """``{"type": class name, "parameters": its __getstate__()}`` of a launch mode or data store:
    what they pickle is their ``__getstate__``."""
    return {"type": _class_name(_stand_in(obj, what)), "parameters": plain(_state(obj, what), what)}


def record_document(record, what, with_timezones=True):
    """The JSON document of a Sumatra record's stand-in: the fields and values of Sumatra's
    ``formatting.record2dict`` (read from the pickled state, never from a built object)."""
    timestamp_format = "%Y-%m-%d %H:%M:%S" + ("%z" if with_timezones else "")
    if not (isinstance(record, Inert) and record.global_name == "sumatra.records.Record"):
        raise Refused(f"{what} is {short(record)}, not a sumatra.records.Record")
    r = _state(record, what)

    def field(name, default=None):
        return plain(r.get(name, default), f"{what}: {name}")

    executable = _state(r.get("executable"), f"{what}: executable")
    repository_obj = r.get("repository")
    repository = _state(repository_obj, f"{what}: repository")
    type_, content = _parameters_text(r.get("parameters", {}), f"{what}: parameters")
    tags = r.get("tags", set())
    if not isinstance(tags, (set, frozenset, list, tuple)):
        raise Refused(f"{what}: tags is {type(tags).__name__}, not a set")
    dependencies = []
    for dep in r.get("dependencies") or []:
        d = _state(dep, f"{what}: dependency")
        module = d.get("module") or dep.global_name.split(".")[-2]  # the class attribute: its module's name
        dependencies.append({key: plain(d.get(key), f"{what}: dependency") for key in ("path", "version", "name")}
                            | {"module": plain(module, f"{what}: dependency"),
                               "diff": plain(d.get("diff"), f"{what}: dependency"),
                               "source": plain(d.get("source"), f"{what}: dependency")})
    platforms = []
    for platform in r.get("platforms") or []:
        p = _state(platform, f"{what}: platform")
        platforms.append({key: plain(p.get(key), f"{what}: platform") for key in (
            "system_name", "ip_addr", "architecture_bits", "machine", "architecture_linkage", "version",
            "release", "network_name", "processor")})
    input_datastore = r.get("input_datastore")
    return {
        "label": field("label"),
        "timestamp": _time(r.get("timestamp"), f"{what}: timestamp", timestamp_format),
        "reason": field("reason"),
        "duration": field("duration"),
        "executable": {"path": plain(executable.get("path"), f"{what}: executable"),
                       "version": plain(executable.get("version"), f"{what}: executable"),
                       "name": plain(executable.get("name", EXECUTABLE_NAMES.get(_class_name(r["executable"]))),
                                     f"{what}: executable"),
                       "options": plain(executable.get("options"), f"{what}: executable")},
        "repository": {"url": plain(repository.get("url"), f"{what}: repository"),
                       "type": _class_name(repository_obj),
                       "upstream": plain(repository.get("upstream"), f"{what}: repository")},
        "main_file": field("main_file"),
        "version": field("version"),
        "parameters": {"content": content, "type": type_},
        "input_data": _data_keys(r.get("input_data") or [], f"{what}: input_data", timestamp_format),
        "script_arguments": field("script_arguments"),
        "launch_mode": _component(r.get("launch_mode"), f"{what}: launch_mode"),
        "datastore": _component(r.get("datastore"), f"{what}: datastore"),
        "input_datastore": _component(input_datastore, f"{what}: input_datastore"),
        "outcome": field("outcome") or "",
        "stdout_stderr": field("stdout_stderr"),
        "output_data": _data_keys(r.get("output_data") or [], f"{what}: output_data", timestamp_format),
        "tags": sorted(plain(list(tags), f"{what}: tags")),
        "diff": field("diff"),
        "user": field("user"),
        "dependencies": dependencies,
        "platforms": platforms,
        "repeats": field("repeats"),
    }


def read_shelve(path, name=None):
    """``[(project, document)]`` of every record of the shelve store ``path``, newest first in each
    project as Sumatra lists them.  A store that holds anything smt never stores is refused as a
    whole (TransferError, one line), before anything is imported."""
    import dbm
    import shelve

    name = name or path
    pairs = []
    try:
        shelf = shelve.Shelf(dbm.open(str(path), "r"))
    except Exception as exc:  # dbm's errors are of several classes, all "cannot open it"
        raise TransferError(f"cannot read the Sumatra record store {name}: {exc}") from None
    try:
        for key in sorted(shelf.dict.keys()):
            project = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            try:
                records = unpickle(shelf.dict[key])
                if isinstance(records, Inert) or not isinstance(records, dict):
                    raise Refused(f"project {project!r} holds {short(records)}, not a dict of records")
                documents = [(record_document(record, f"record {label!r} of project {project!r}"),
                              record._inert["state"].get("timestamp")) for label, record in records.items()]
            except (Refused, pickle.UnpicklingError) as exc:
                raise TransferError(f"cannot read the Sumatra record store {name}: {exc}; nothing was imported") \
                    from None
            except (Exception, RecursionError) as exc:  # a damaged pickle: say what broke, one line
                raise TransferError(f"cannot read the Sumatra record store {name}: project {project!r}: "
                                    f"{type(exc).__name__}: {exc}; nothing was imported") from None
            documents.sort(key=lambda pair: pair[1], reverse=True)  # as Sumatra lists them: newest first
            pairs.extend((project, doc) for doc, _when in documents)
    finally:
        shelf.close()
    return pairs
