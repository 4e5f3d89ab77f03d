#!/usr/bin/env python3
"""The guarantee mutation suite: break each promise of docs/guarantees.md the way a refactor
would, and check that the test named for it fails.

    python3 scripts/mutants.py               # every mutant, two at a time; exit 1 on a survivor
    python3 scripts/mutants.py -k spool      # the mutants whose name or row contains "spool"
    python3 scripts/mutants.py --check       # only check that every mutant still applies (seconds)
    python3 scripts/mutants.py --list        # the mutants, their rows and tests

The mutants live in tests/mutation/mutants.py: each names a row of docs/guarantees.md (a piece of
its promise text that matches exactly one row), a file, an exact snippet of it (which must occur
exactly once), its replacement, and the quickest tests that must fail with it applied.

How it runs: the tree (git's tracked and untracked-but-not-ignored files) is copied once per
worker, with a copy of .venv in which the copy is installed in editable mode (with PYTHONPATH
alone, the installed ``balsamdb.server`` would still map to the original tree).  Per mutant:
patch the copy, run the named tests with a deadline, restore the file.  A mutant is *killed* when
the tests fail (or overrun their deadline: a hang fails CI too), *survived* when they pass.

Exit status: 0 when every mutant is killed; 1 on a survivor; 2 when a mutant no longer applies
(its snippet is gone or not unique, its file or row is gone): fix the mutant, never skip it.
"""

import argparse
import concurrent.futures
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS_FILE = ROOT / "tests" / "mutation" / "mutants.py"
GUARANTEES = ROOT / "docs" / "guarantees.md"
DEFAULT_TIMEOUT = 180  # seconds per mutant; a test that hangs this long counts as killed


def load_mutants(path=MUTANTS_FILE):
    spec = importlib.util.spec_from_file_location("guarantee_mutants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


def guarantee_rows(path=GUARANTEES):
    """[(section, promise)] for every table row of docs/guarantees.md."""
    rows, section = [], ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| ") and not line.startswith("| promise |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((section, cells[0]))
    return rows


def row_of(mutant, rows):
    """The one row whose promise contains the mutant's ``row`` text, or an error string."""
    found = [r for r in rows if mutant.row in r[1]]
    if len(found) != 1:
        return f"row text {mutant.row!r} matches {len(found)} rows of docs/guarantees.md (needs exactly 1)"
    return found[0]


def problems(mutants, rows, root=ROOT):
    """Why each mutant no longer applies: {name: reason}."""
    out = {}
    names = set()
    for m in mutants:
        if m.name in names:
            out[m.name] = "duplicate mutant name"
        names.add(m.name)
        found = row_of(m, rows)
        if isinstance(found, str):
            out[m.name] = found
            continue
        path = root / m.file
        if not path.is_file():
            out[m.name] = f"{m.file} does not exist (moved? update the mutant)"
            continue
        count = path.read_text().count(m.old)
        if count != 1:
            out[m.name] = f"its snippet occurs {count} times in {m.file} (needs exactly 1): {m.old[:60]!r}"
            continue
        for test in m.tests:
            test_file = root / test.split("::")[0]
            if not test_file.is_file():
                out[m.name] = f"test file {test_file.relative_to(root)} does not exist"
            elif "::" in test and f"def {test.split('::')[1].split('[')[0]}(" not in test_file.read_text():
                out[m.name] = f"test {test} does not exist"
    return out


def tree_files(root=ROOT):
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, capture_output=True, check=True).stdout
    return [f for f in listed.decode().split("\0") if f and (root / f).is_file()]


def make_worker_copy(base, index):
    """A copy of the tree with its own venv (a copy of .venv) holding an editable install of the copy."""
    copy = base / f"w{index}"
    copy.mkdir()
    shared_tmp(copy).mkdir(mode=0o711)
    os.chmod(shared_tmp(copy), 0o711)  # (mkdir's mode is masked by the umask)
    for rel in tree_files():
        target = copy / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "dev.py"), "test", "--version"], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["cp", "-a", str(venv), str(copy / ".venv")], check=True)  # cp: faster than copytree
    python = copy / ".venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(copy)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    where = subprocess.run([str(python), "-c", "import balsamdb.server, balsamdb; print(balsamdb.server.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    if not where.startswith(str(copy)):
        raise SystemExit(f"[mutants] the worker copy's balsamdb.server maps to {where}, not into {copy}")
    return copy


def run_mutant(mutant, copy, timeout):
    """Apply, test, restore: ('killed'|'survived'|'timeout'|'not applied', seconds, output tail)."""
    path = copy / mutant.file
    original = path.read_text()
    if original.count(mutant.old) != 1:
        return "not applied", 0.0, f"snippet occurs {original.count(mutant.old)} times"
    started = time.monotonic()
    path.write_text(original.replace(mutant.old, mutant.new))
    # Without CI: a test that lacks a tool skips (and the mutant counts as not killed) instead of
    # failing, which would count as a kill.
    env = {k: v for k, v in os.environ.items()
           if k not in ("BALSAM_DB_PATH", "CI") and not k.startswith("BALSAMDB_")}
    env["PATH"] = f"{copy / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["BALSAMDB_NO_SHRINK"] = "1"  # a failing property is a kill: no time spent shrinking its example
    env["BALSAMDB_TEST_SHARED_TMP"] = str(shared_tmp(copy))  # tests/helpers.passable_dir: clusters, servers
    env.pop("PYTHONPATH", None)
    cmd = [str(copy / ".venv" / "bin" / "python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           *plugins_off(copy, mutant.tests), f"--basetemp={copy.parent / (copy.name + '-tmp')}", *mutant.tests]
    try:
        proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            verdict = "survived" if proc.returncode == 0 else "killed"
            if proc.returncode == 0 and re.search(r"\d+ skipped", out.splitlines()[-1] if out.strip() else ""):
                verdict = "skipped"  # a test that did not run killed nothing: install what it needs
            if proc.returncode in (2, 3, 4, 5):  # interrupted, internal error, usage error, nothing collected
                verdict = "error"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, _ = proc.communicate()
            verdict = "timeout"
    finally:
        path.write_text(original)
        stop_leftovers(copy)
    tail = "\n".join(out.strip().splitlines()[-6:])
    return verdict, time.monotonic() - started, tail


def plugins_off(copy, tests):
    """pytest's options that leave out the Hypothesis plugin when no file of ``tests`` uses Hypothesis:
    importing it is 1.15 of the 1.9 CPU seconds of a pytest start (measured with --collect-only), paid
    once per mutant.  Hypothesis runs without its plugin too; the files that use it keep it."""
    files = {copy / test.split("::")[0] for test in tests}
    if any("hypothesis" in path.read_text() for path in files if path.is_file()):
        return []
    return ["-p", "no:hypothesispytest"]


def shared_tmp(copy):
    """Where the worker's tests make the directories another user must pass through (their PostgreSQL
    clusters' among them: tests/helpers.passable_dir), beside the copy."""
    return copy.parent / (copy.name + "-shared")


def stop_leftovers(copy):
    """SIGKILL every process that runs from the worker's copy (its venv's python) or in its shared tmp
    directory: the daemons a test started detach into sessions of their own (pg_ctl's postmaster too),
    so a test killed at its timeout (or a mutant that breaks a fixture's stop) would leave its
    watchdog, server, relay or cluster running after the run."""
    markers = (str(copy / ".venv" / "bin" / "python").encode(), str(shared_tmp(copy)).encode())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if any(marker in cmdline for marker in markers):
                os.kill(int(entry.name), 9)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read


def score_table(mutants, results, rows):
    """Lines of the per-section and per-row score."""
    per_row = {}
    for m in mutants:
        section, promise = row_of(m, rows)
        verdict = results.get(m.name, ("not run",))[0]
        entry = per_row.setdefault((section, promise), [0, 0, []])
        entry[1] += 1
        if verdict.split(" ")[0] in ("killed", "timeout"):
            entry[0] += 1
        else:
            entry[2].append(f"{m.name} ({verdict})")
    lines, by_section = [], {}
    for (section, promise), (killed, total, bad) in per_row.items():
        by_section.setdefault(section, []).append((promise, killed, total, bad))
    covered = {key for key in per_row}
    for section in dict.fromkeys(s for s, _ in rows):
        entries = by_section.get(section, [])
        killed = sum(e[1] for e in entries)
        total = sum(e[2] for e in entries)
        in_section = sum(1 for s, _ in rows if s == section)
        rows_hit = sum(1 for s, p in covered if s == section)
        lines.append(f"{killed:3d}/{total:<3d} killed  {rows_hit:2d}/{in_section:<2d} rows  {section}")
        for promise, k, t, bad in entries:
            text = re.sub(r"\s+", " ", promise)
            lines.append(f"          {k}/{t}  {text[:90]}{'...' if len(text) > 90 else ''}")
            for b in bad:
                lines.append(f"                 NOT KILLED: {b}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-j", "--workers", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("-k", dest="select", help="only mutants whose name or row contains this text (or one of several, comma-separated)")
    parser.add_argument("--check", action="store_true", help="only check that every mutant applies")
    parser.add_argument("--list", action="store_true", help="list the mutants")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant")
    parser.add_argument("--mutants", type=Path, default=MUTANTS_FILE, help="the file listing the mutants")
    parser.add_argument("--keep", action="store_true", help="keep the worker copies (their path is printed)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    mutants = load_mutants(args.mutants)
    rows = guarantee_rows()
    bad = problems(mutants, rows)
    if args.list:
        for m in mutants:
            print(f"{m.name}\n    row:   {m.row}\n    file:  {m.file}\n    tests: {' '.join(m.tests)}\n    why:   {m.why}")
    if bad:
        for name, reason in bad.items():
            print(f"[mutants] NOT APPLICABLE {name}: {reason}")
        print(f"[mutants] {len(bad)} mutant(s) no longer apply: fix them (never skip them)")
        return 2
    if args.select:
        wanted = [w.strip() for w in args.select.split(",") if w.strip()]
        mutants = [m for m in mutants if any(w in m.name or w in m.row for w in wanted)]
    covered = {row_of(m, rows) for m in load_mutants(args.mutants)}
    print(f"[mutants] {len(mutants)} mutants apply; they cover {len(covered)} of {len(rows)} rows of docs/guarantees.md")
    if args.check or args.list:
        return 0

    base = Path(tempfile.mkdtemp(prefix="balsamdb-mutants-"))
    os.chmod(base, 0o711)  # passable by the (non-root) user of the tests' PostgreSQL cluster under root
    results = {}
    lock = threading.Lock()
    try:
        setup_started = time.monotonic()
        workers = max(1, min(args.workers, len(mutants)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            copies = list(pool.map(lambda i: make_worker_copy(base, i), range(workers)))
        print(f"[mutants] {workers} worker copies with their own editable installs in {base} "
              f"({time.monotonic() - setup_started:.1f} s)", flush=True)
        free = list(copies)
        free_lock = threading.Lock()

        def one(mutant):
            with free_lock:
                copy = free.pop()
            try:
                # A mutant whose test catches it only when a race goes one way (``attempts`` > 1, each
                # saying why in the mutant) is run again until killed, at most ``attempts`` times.
                seconds = 0.0
                for attempt in range(max(1, mutant.attempts)):
                    verdict, took, tail = run_mutant(mutant, copy, mutant.timeout or args.timeout)
                    seconds += took
                    if verdict in ("killed", "timeout", "not applied"):
                        break
                if attempt:
                    verdict = f"{verdict} ({attempt + 1} runs)" if verdict != "survived" else verdict
            finally:
                with free_lock:
                    free.append(copy)
            with lock:
                results[mutant.name] = (verdict, seconds)
                mark = "ok " if verdict.split(" ")[0] in ("killed", "timeout") else "!! "
                print(f"[mutants] {mark}{verdict:11s} {seconds:6.1f} s  {mutant.name}", flush=True)
                if verdict.split(" ")[0] not in ("killed", "timeout"):
                    print("           " + tail.replace("\n", "\n           "), flush=True)

        # The slow ones first, so that the two workers end together.
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, sorted(mutants, key=lambda m: not m.slow)))
    finally:
        if args.keep:
            print(f"[mutants] worker copies kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print()
    for line in score_table(mutants, results, rows):
        print(line)
    killed = sum(1 for v, _ in results.values() if v.split(" ")[0] in ("killed", "timeout"))
    survivors = [n for n, (v, _) in results.items() if v.split(" ")[0] not in ("killed", "timeout")]
    print(f"\n[mutants] {killed}/{len(mutants)} killed in {time.monotonic() - started:.0f} s "
          f"(test time {sum(s for _, s in results.values()):.0f} s, {workers} workers)")
    if survivors:
        print(f"[mutants] NOT KILLED: {', '.join(survivors)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
