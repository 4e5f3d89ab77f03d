"""The record documents the tests save: dicts as Sumatra's HTTP store and `smt export` carry them.
(Records built from Sumatra's own classes stay in test_sumatra_contract.py, their only user.)"""

UNICODE = "Ünïcødé ✓ 数据"


def sumatra_record(label, **changes):
    """A record document with the 23 keys that Sumatra 0.8 sends."""
    doc = {
        "label": label, "timestamp": "2024-05-01 12:00:00+0000", "reason": "", "duration": None,
        "executable": {"path": "/usr/bin/python3", "version": "3.11.7", "name": "Python", "options": ""},
        "repository": {"url": "/home/ada/proj", "type": "GitRepository", "upstream": None},
        "main_file": "main.py", "version": "f4f0cc958cc8b712ce8bd61c112cd00dc3da0c42",
        "parameters": {"content": "", "type": "NoneType"}, "input_data": [], "script_arguments": "1 2",
        "launch_mode": {"type": "SerialLaunchMode", "parameters": "{'working_directory': '/home/ada/proj'}"},
        "datastore": {"type": "FileSystemDataStore", "parameters": "{'root': '/home/ada/proj/Data'}"},
        "input_datastore": {"type": "FileSystemDataStore", "parameters": "{'root': '/'}"},
        "outcome": None, "stdout_stderr": "Not launched.", "output_data": [], "tags": ["_initialized_"],
        "diff": "", "user": "", "dependencies": [], "platforms": [], "repeats": None,
    }
    doc.update(changes)
    return doc


def sweep_record(label, i, **changes):
    """Record number ``i`` of a parameter sweep, as Sumatra sends it: its times, outcome, tags (even/odd,
    tens), parameters and output file follow from ``i``."""
    doc = {
        "label": label, "timestamp": f"2024-05-01 12:{i // 60:02d}:{i % 60:02d}+0000", "reason": f"sweep point {i}",
        "duration": float(i) + 0.5, "outcome": "converged" if i % 3 else "diverged",
        "executable": {"path": "/usr/bin/python3", "version": "3.11.7", "name": "Python", "options": ""},
        "repository": {"url": "/home/ada/proj", "type": "GitRepository", "upstream": None},
        "main_file": "main.py", "version": "f4f0cc958cc8", "diff": "",
        "parameters": {"content": f"alpha = {i}\nbeta = 2\n", "type": "SimpleParameterSet"},
        "input_data": [], "script_arguments": "params.txt",
        "launch_mode": {"type": "SerialLaunchMode", "parameters": "{}"},
        "datastore": {"type": "FileSystemDataStore", "parameters": "{}"},
        "input_datastore": {"type": "FileSystemDataStore", "parameters": "{}"},
        "stdout_stderr": "ok", "output_data": [{"path": f"out-{i}.dat", "digest": f"d{i}", "creation": ""}],
        "tags": ["even" if i % 2 == 0 else "odd"] + (["tens"] if i % 10 == 0 else []),
        "user": "ada", "dependencies": [{"name": "numpy", "version": "1.26.4", "path": "", "module": "python"}],
        "platforms": [{"system_name": "Linux", "machine": "x86_64"}], "repeats": None,
    }
    doc.update(changes)
    return doc


def small_record(label, **fields):
    """A record with the fields the store fills in or checks (test_api.py)."""
    doc = {"label": label, "timestamp": "2026-01-02 03:04:05+0000", "reason": "r", "main_file": "m.py",
           "version": "abc", "duration": None, "tags": [], "outcome": "", "stdout_stderr": "Not launched.",
           "parameters": {"content": "a = 1", "type": "SimpleParameterSet"}}
    doc.update(fields)
    return doc


def bare_record(label, **fields):
    """A record of an `smt export` file with only its label, timestamp and tags (test_sumatra_export.py)."""
    return {"label": label, "timestamp": "2024-01-01 12:00:00+0000", "tags": [], **fields}


def numbered_record(i, project):
    """Record ``i`` of ``project`` for a copy between stores: unicode, tags and output digests vary with ``i``."""
    return {"label": f"run-{i:05d}", "timestamp": f"2025-01-{1 + i % 28:02d} 12:{i % 60:02d}:00+0000",
            "reason": f"sweep {i} {UNICODE if i % 7 == 0 else ''}", "duration": i / 10, "outcome": None,
            "parameters": {"content": f"n = {i}", "type": "SimpleParameterSet"}, "main_file": "main.py",
            "tags": sorted({f"t{i % 5}", "paper"} if i % 3 == 0 else {f"t{i % 5}"}), "project": project,
            "output_data": [{"path": f"out-{i}.txt", "digest": f"{i:040x}"}]}
