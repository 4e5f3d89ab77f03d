"""What a run ran on and with: the platform, the code's repository state (git), the
executable, and the versions of the Python packages it imported.  Each is a piece of a
Sumatra record, in the shape ``smt`` writes."""

import ast
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys

GIT_TIMEOUT = 10.0
#: Interpreters whose ``--version`` is asked (never any other program's: it could do anything).
INTERPRETERS = {"python": "Python", "python3": "Python", "bash": "bash", "sh": "sh", "Rscript": "R",
                "perl": "Perl", "julia": "Julia", "node": "node"}


def platform_info():
    """Sumatra's platform dict, plus ``cpu_count``, ``memory_bytes`` and ``python_version``."""
    # os.uname, not platform.uname/architecture: those start `uname -p` and `file` (30 ms)
    uname = os.uname()
    bits, linkage = f"{struct.calcsize('P') * 8}bit", "ELF" if sys.platform.startswith("linux") else ""
    try:
        ip_addr = socket.gethostbyname(uname.nodename)
    except OSError:
        ip_addr = "127.0.0.1"
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"system_name": uname.sysname, "ip_addr": ip_addr, "architecture_bits": bits,
            "machine": uname.machine, "architecture_linkage": linkage, "version": uname.version,
            "release": uname.release, "network_name": uname.nodename, "processor": uname.machine,
            "cpu_count": os.cpu_count(), "memory_bytes": memory, "python_version": platform.python_version()}


def _git(args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, errors="replace",
                          timeout=GIT_TIMEOUT)


def git_state(directory):
    """``(repository dict, version, diff, note)`` of the git working tree holding ``directory``.

    Not a repository (or no git): Sumatra's plain ``Repository`` with an empty url, no version
    and a ``note`` saying so.  ``diff`` is ``git diff HEAD`` (staged and unstaged changes);
    untracked files are named in the note."""
    none = {"url": "", "type": "Repository", "upstream": None}
    if shutil.which("git") is None:
        return none, "", "", "no git program: the code version was not recorded"
    try:
        top = _git(["rev-parse", "--show-toplevel", "HEAD"], directory)  # one call for both (git is ~15 ms)
        lines = top.stdout.split("\n")
        if not lines[0].strip() or (top.returncode != 0 and "HEAD" not in top.stderr):
            return none, "", "", f"{directory} is not in a git repository: the code version was not recorded"
        root = lines[0].strip()
        version = lines[1].strip() if top.returncode == 0 and len(lines) > 1 else ""
        diff = _git(["diff", "HEAD", "--no-color", "--no-ext-diff"], root).stdout if version else ""
        upstream = _git(["config", "--get", "remote.origin.url"], root).stdout.strip() or None
        untracked = _git(["ls-files", "--others", "--exclude-standard"], root).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return none, "", "", f"git failed in {directory}: {exc}"
    notes = []
    if not version:
        notes.append("the repository has no commit yet")
    untracked = [u for u in untracked if u]
    if untracked:
        shown = ", ".join(untracked[:20]) + (f" and {len(untracked) - 20} more" if len(untracked) > 20 else "")
        notes.append(f"untracked files not in the diff: {shown}")
    return {"url": root, "type": "GitRepository", "upstream": upstream}, version, diff, "; ".join(notes)


def executable_info(program):
    """Sumatra's executable dict of ``program`` (a name or path): its full path, name and, for a
    known interpreter, version."""
    path = shutil.which(program) or program
    base = os.path.basename(path)
    name = next((n for key, n in INTERPRETERS.items() if base == key or base.startswith(key + ".")
                 or (key.startswith("python") and base.startswith("python"))), base)
    version = ""
    if os.path.realpath(path) == os.path.realpath(sys.executable):
        version = platform.python_version()
    elif name != base or base in INTERPRETERS:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5, errors="replace")
            found = re.search(r"\d+\.\d+(\.\d+)*", (out.stdout or out.stderr or "").split("\n", 1)[0])
            version = found.group(0) if found else ""
        except (OSError, subprocess.TimeoutExpired):
            version = ""
    return {"path": path, "version": version, "name": name, "options": ""}


def _version_of(name, module=None):
    from importlib import metadata

    version = getattr(module, "__version__", None) if module is not None else None
    if isinstance(version, str):
        return version
    try:
        return metadata.version(name)
    except Exception:  # noqa: BLE001 - not a distribution by that name (yaml is PyYAML's)
        pass
    if not _DISTRIBUTIONS and hasattr(metadata, "packages_distributions"):
        _DISTRIBUTIONS.update(metadata.packages_distributions())  # read once, only for such names
    for distribution in _DISTRIBUTIONS.get(name, ()):
        try:
            return metadata.version(distribution)
        except Exception:  # noqa: BLE001
            continue
    return "unknown"


_DISTRIBUTIONS = {}


def _third_party(names):
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    return sorted(n for n in set(names) if n and not n.startswith("_") and n not in stdlib
                  and n not in sys.builtin_module_names)


def loaded_dependencies():
    """Sumatra's dependency dicts of the top-level packages imported in this process."""
    out = []
    for name in _third_party(m.split(".")[0] for m in list(sys.modules)):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) or ""
        out.append({"path": os.path.dirname(path) if path.endswith("__init__.py") else path,
                    "version": _version_of(name, module), "name": name, "module": "python", "diff": "",
                    "source": None})
    return out


def imported_by(main_file):
    """Sumatra's dependency dicts of the packages that the Python file ``main_file`` imports
    (read, not run; versions as installed for this interpreter)."""
    try:
        with open(main_file, "rb") as handle:
            tree = ast.parse(handle.read(), main_file)
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module.split(".")[0])
    return [{"path": "", "version": _version_of(name), "name": name, "module": "python", "diff": "", "source": None}
            for name in _third_party(names)]
