"""A longer fuzzing run of the wire protocol than the one in the test suite.

    python scripts/fuzz.py [--examples 20000]

Runs tests/test_fuzz.py with random (not derandomized) examples against a real
server; every failure is shrunk and printed by hypothesis.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="examples per property")
    args = parser.parse_args()
    env = dict(os.environ, BALSAMDB_FUZZ_EXAMPLES=str(args.examples), BALSAMDB_FUZZ_RANDOM="1")
    cmd = [sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_fuzz.py")]
    sys.exit(subprocess.run(cmd, cwd=ROOT, env=env).returncode)


if __name__ == "__main__":
    main()
