#!/usr/bin/env python3
"""Set up a virtual environment in .venv and run the demo or the tests.

    python3 scripts/dev.py demo      # the main job on the default SQLite DB
    python3 scripts/dev.py test      # the whole test suite (extra args go to pytest)
    python3 scripts/dev.py bench     # db bench, the writers benchmark (extra args go to it)

Needs nothing but Python 3.9+ and the package index; the first run installs
balsamdb with its test extras into .venv (later runs reuse it).
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"


def ensure_venv():
    marker = VENV / ".installed"
    stamp = str((ROOT / "setup.cfg").stat().st_mtime)
    if not PY.exists():
        print(f"[dev] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not marker.exists() or marker.read_text() != stamp:
        print("[dev] installing balsamdb and its test extras into .venv", flush=True)
        subprocess.run([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"], check=True)
        marker.write_text(stamp)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "bench"):
        sys.exit(__doc__)
    what, rest = sys.argv[1], sys.argv[2:]
    ensure_venv()
    env = dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if what == "demo":
        cmd = [str(PY), str(ROOT / "scripts" / "demo.py"), *rest]
    elif what == "bench":
        cmd = [str(PY), "-m", "balsamdb.cli", "bench", *rest]
    else:
        cmd = [str(PY), "-m", "pytest", *rest]
    sys.exit(subprocess.run(cmd, cwd=ROOT, env=env).returncode)


if __name__ == "__main__":
    main()
