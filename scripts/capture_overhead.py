#!/usr/bin/env python3
"""What `db record run` / balsamdb.capture add to a run: the median time of a trivial command
(`true`) run plainly and run under capture (git state, platform, output walk, the record's save),
without hashing (--max-digest-bytes 0) and with it, on a fresh DB directory with its server.

    python scripts/capture_overhead.py [--runs 20] [--files 200]

--files: how many small files the working directory (a git repository) holds, all inputs."""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    import balsamdb
    from balsamdb.provenance import run_command

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db_path = tmp / "db"
        subprocess.run([sys.executable, "-m", "balsamdb.cli", "init", str(db_path)], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "balsamdb.cli", "dbserver", "--path", str(db_path)], check=True,
                       capture_output=True)
        try:
            work = tmp / "work"
            work.mkdir()
            for i in range(args.files):
                (work / f"in{i:04d}.dat").write_bytes(bytes(4096))
            subprocess.run(["git", "init", "-q", "."], cwd=work, check=True)
            subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "add", "."], cwd=work, check=True)
            subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"], cwd=work,
                           check=True)
            plain, bare, hashed = [], [], []
            with balsamdb.connect(db_path) as db:
                for _ in range(args.runs):
                    start = time.perf_counter()
                    subprocess.run(["true"], cwd=work, check=True)
                    plain.append(time.perf_counter() - start)
                    for times, limit in ((bare, 0), (hashed, None)):
                        start = time.perf_counter()
                        run_command(["true"], "overhead", db=db, working_directory=str(work), inputs=["*.dat"],
                                    max_digest_bytes=limit)
                        times.append(time.perf_counter() - start)
        finally:
            subprocess.run([sys.executable, "-m", "balsamdb.cli", "dbserver", "--stop", "--path", str(db_path)],
                           capture_output=True)
    ms = lambda values: statistics.median(values) * 1000  # noqa: E731
    print(f"runs: {args.runs}, working directory: a git repository of {args.files} files of 4 KiB, all inputs")
    print(f"plain `true`:                          {ms(plain):7.1f} ms")
    print(f"under capture, no hashing:             {ms(bare):7.1f} ms  (overhead {ms(bare) - ms(plain):.1f} ms)")
    print(f"under capture, SHA-256 of every input: {ms(hashed):7.1f} ms  (overhead {ms(hashed) - ms(plain):.1f} ms)")


if __name__ == "__main__":
    main()
