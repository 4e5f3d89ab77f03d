"""The package installs under one name, and its layers import one way: cli -> bench -> server -> core.

The source tree keeps the design card's top-level folders (balsamdb/, dbserver/, cli/, bench/); setup.cfg maps
them to balsamdb, balsamdb.server, balsamdb.cli and balsamdb.bench.  Inside the server, the role folders
point one way too (ROLES below).  These tests read the real wheel and the real
import statements, so a generic top-level name in site-packages or an import against the layering fails.
"""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"balsamdb": ROOT / "balsamdb", "balsamdb.server": ROOT / "dbserver", "balsamdb.bench": ROOT / "bench",
          "balsamdb.cli": ROOT / "cli"}
# what each layer may not import: the core none of the others, the server neither the benchmarks nor the CLI
FORBIDDEN = {"balsamdb": ("balsamdb.server", "balsamdb.bench", "balsamdb.cli"),
             "balsamdb.server": ("balsamdb.bench", "balsamdb.cli"), "balsamdb.bench": ("balsamdb.cli",),
             "balsamdb.cli": ()}
# the server's role folders: what each may not import (the write server knows nothing of HTTP or the
# relay; the HTTP store and the relay never reach into the write server; PostgreSQL control is a leaf)
ROLES = {
    "balsamdb.server.writer": ("balsamdb.server.http", "balsamdb.server.relay"),
    "balsamdb.server.http": ("balsamdb.server.writer", "balsamdb.server.relay", "balsamdb.server.supervisor"),
    "balsamdb.server.relay": ("balsamdb.server.writer", "balsamdb.server.supervisor", "balsamdb.server.postgres"),
    "balsamdb.server.postgres": ("balsamdb.server.writer", "balsamdb.server.http", "balsamdb.server.relay",
                                 "balsamdb.server.supervisor"),
    # the read service reads through the core's read layer (balsamdb.reads), never the writer's code
    "balsamdb.server.reader": ("balsamdb.server.writer", "balsamdb.server.http", "balsamdb.server.relay",
                               "balsamdb.server.supervisor", "balsamdb.server.postgres"),
}


def module_name(layer, path):
    rel = path.relative_to(LAYERS[layer]).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([layer, *parts])


def imported_names(layer, path):
    """Absolute names of every module that ``path`` imports, relative imports resolved (at any depth:
    inside functions too, where a lazy import would hide a cycle)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(layer, path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield node.lineno, base
            for alias in node.names:  # `from balsamdb import server` imports balsamdb.server
                yield node.lineno, f"{base}.{alias.name}"


def layer_of(name):
    if name.startswith(("dbserver", "cli")) and name.split(".")[0] in ("dbserver", "cli"):
        return "generic"  # the source folder names must never be imported as packages
    for layer in ("balsamdb.cli", "balsamdb.bench", "balsamdb.server"):
        if name == layer or name.startswith(layer + "."):
            return layer
    return "balsamdb" if name == "balsamdb" or name.startswith("balsamdb.") else None


def violations():
    found = []
    for layer, folder in LAYERS.items():
        for path in sorted(folder.rglob("*.py")):
            for lineno, name in imported_names(layer, path):
                target = layer_of(name)
                shown = path.relative_to(folder.parent)
                where = f"{shown}:{lineno} imports {name}"
                if target == "generic":
                    found.append(f"{where}: the source folder's name, not balsamdb.server / balsamdb.cli")
                elif target in FORBIDDEN[layer]:
                    found.append(f"{where}: layer {layer} may not import {target}")
                role = role_of(module_name(layer, path))
                if role and any(name == r or name.startswith(r + ".") for r in ROLES[role]):
                    found.append(f"{where}: role {role} may not import {name}")
    return found


def role_of(module):
    return next((r for r in ROLES if module == r or module.startswith(r + ".")), None)


def test_layers_import_one_way_core_server_cli():
    assert violations() == []


def test_the_layering_check_sees_a_violation(tmp_path, monkeypatch):
    """The check above can fail: a core module importing the server, even lazily inside a function,
    and a relative import climbing into it, are both reported."""
    core = tmp_path / "core"
    (core / "sub").mkdir(parents=True)
    (core / "__init__.py").write_text("")
    (core / "sub" / "__init__.py").write_text("")
    (core / "bad.py").write_text("def f():\n    from balsamdb.server import control\n")
    (core / "sub" / "worse.py").write_text("from ..cli import main\n")
    server = tmp_path / "server"
    server.mkdir()
    (server / "ok.py").write_text("from balsamdb import dbdir\nfrom . import postgres\n")
    monkeypatch.setitem(LAYERS, "balsamdb", core)
    monkeypatch.setitem(LAYERS, "balsamdb.server", server)
    monkeypatch.setitem(LAYERS, "balsamdb.cli", tmp_path / "nocli")
    found = violations()
    assert len([v for v in found if "bad.py:2 imports balsamdb.server" in v]) >= 1, found
    assert any("worse.py:1 imports balsamdb.cli" in v for v in found), found
    assert not any("ok.py" in v for v in found), found


def test_the_role_check_sees_a_violation(tmp_path, monkeypatch):
    """The write server importing the HTTP store is reported, a relay importing core is not."""
    server = tmp_path / "server"
    (server / "writer").mkdir(parents=True)
    (server / "relay").mkdir()
    (server / "writer" / "loop.py").write_text("def f():\n    from balsamdb.server.http import app\n")
    (server / "relay" / "fine.py").write_text("from balsamdb import spool\nfrom ..http import process\n")
    monkeypatch.setitem(LAYERS, "balsamdb.server", server)
    found = violations()
    assert any("loop.py:2 imports balsamdb.server.http" in v and "role balsamdb.server.writer" in v
               for v in found), found
    assert not any("fine.py" in v for v in found), found


def test_wheel_holds_only_balsamdb(tmp_path):
    """A built wheel installs one top-level name: balsamdb/ (with server/ and cli/ inside) and its
    dist-info; the console scripts point into it."""
    pytest.importorskip("wheel", reason="the test extras install wheel")
    # From a copy without build/: setuptools would otherwise pack what an earlier build left there.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             "default_db", "test-screenshots"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("balsamdb-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        tops = {n.split("/")[0] for n in names}
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"balsamdb"}, sorted(tops)
    for module in ("balsamdb/server/supervisor/watchdog.py", "balsamdb/server/writer/server.py",
                   "balsamdb/server/dbinit.py", "balsamdb/bench/writers.py", "balsamdb/cli/main.py",
                   "balsamdb/cli/__main__.py"):
        assert module in names, module
    for page_file in ("templates/jobs.html", "templates/records.html", "static/balsamdb.js", "static/balsamdb.css"):
        assert f"balsamdb/server/http/{page_file}" in names, f"{page_file}: the web pages' files (package_data)"
    # Every module of the source tree is in the wheel (a new subpackage must be listed in setup.cfg).
    installed = {"balsamdb": "balsamdb", "dbserver": "balsamdb/server", "cli": "balsamdb/cli", "bench": "balsamdb/bench"}
    for folder, target in installed.items():
        for source in (ROOT / folder).rglob("*.py"):
            module = f"{target}/{source.relative_to(ROOT / folder).as_posix()}"
            assert module in names, f"{module} is not in the wheel: list its package in setup.cfg"
    for template in (ROOT / "dbserver" / "http" / "templates").glob("*.html"):
        assert f"balsamdb/server/http/templates/{template.name}" in names, template.name
    assert "db = balsamdb.cli.main:main" in entry_points and "balsamdb = balsamdb.cli.main:main" in entry_points


def test_server_modules_run_under_the_installed_name():
    """The watchdog and the write server are started as ``python -m balsamdb.server.<role>``."""
    for module in ("balsamdb.server.supervisor.watchdog", "balsamdb.server.writer.server",
                   "balsamdb.server.reader.service", "balsamdb.cli"):
        shown = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                               cwd="/")
        assert shown.returncode == 0, (module, shown.stderr[-2000:])


def import_cycles(layer="balsamdb"):
    """The strongly connected components (of two or more modules) of the layer's import graph, counting
    imports inside functions too (a lazy import hides a cycle, it does not break it)."""
    folder = LAYERS[layer]
    modules = {module_name(layer, path): path for path in folder.rglob("*.py")}
    def reached(name):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}

    # (an edge to one's own package is left out: every module of a package imports it first)
    graph = {m: {n for _, name in imported_names(layer, p) if name in modules for n in reached(name)
                 if n in modules and not (m + ".").startswith(n + ".")}
             for m, p in modules.items()}
    order, low, stack, cycles = {}, {}, [], []

    def visit(v):  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                cycles.append(component)

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_no_import_cycle_in_the_core():
    """answers -> operations -> statements -> answers was one (closed by a lazy import): the
    operation's policy is now a field of the registered operation, and answers reads the table of
    job fields, not the operations.  (models <-> operations.record_links and the handle's
    api -> ... -> job_run -> api went with balsamdb/migrations.py.)"""
    assert import_cycles() == []


def test_the_cycle_check_sees_a_lazy_cycle(tmp_path, monkeypatch):
    core = tmp_path / "core"
    core.mkdir()
    (core / "__init__.py").write_text("")
    (core / "a.py").write_text("from . import b\n")
    (core / "b.py").write_text("def f():\n    from .a import x\n")
    (core / "c.py").write_text("from . import a\n")
    # a cycle through a package's __init__: d imports pkg.leaf, which runs pkg/__init__, which imports e -> d
    (core / "pkg").mkdir()
    (core / "pkg" / "__init__.py").write_text("from .. import e\n")
    (core / "pkg" / "leaf.py").write_text("")
    (core / "d.py").write_text("from .pkg.leaf import x\n")
    (core / "e.py").write_text("from .d import y\n")
    monkeypatch.setitem(LAYERS, "balsamdb", core)
    assert sorted(map(sorted, import_cycles())) == [["balsamdb.a", "balsamdb.b"],
                                                     ["balsamdb.d", "balsamdb.e", "balsamdb.pkg"]]


# The HTTP stack and the progress bar are imported only by what uses them (issue 28 §6): the
# everyday commands start without them.
HEAVY = ("flask", "werkzeug", "jinja2", "waitress", "tqdm", "matplotlib")
_IMPORTED = """
import sys
from balsamdb.cli.main import main
try:
    main(sys.argv[1:], prog_name="db")
except SystemExit as exc:
    if exc.code:
        raise
print(sorted({m.split(".")[0] for m in sys.modules} & set(%r)))
"""


def test_everyday_commands_import_no_http_stack_and_no_progress_bar(tmp_path):
    """``db init --db-type sqlite3``, ``db ls`` and ``db --help`` in a fresh interpreter each: none
    imports flask, werkzeug, jinja2, waitress, tqdm or matplotlib (each costs start-up time)."""
    path = tmp_path / "db"
    for args in (["init", str(path), "--db-type", "sqlite3"], ["ls", "--path", str(path)], ["--help"]):
        ran = subprocess.run([sys.executable, "-c", _IMPORTED % (HEAVY,), *args], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert ran.returncode == 0, (args, ran.stderr[-2000:])
        assert ran.stdout.strip().splitlines()[-1] == "[]", (args, ran.stdout[-500:])
