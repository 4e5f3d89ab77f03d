#!/usr/bin/env python3
"""Concurrent writers, side by side (the same as `db bench`): see bench/writers.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from balsamdb.bench.writers import main  # noqa: E402

if __name__ == "__main__":
    main()
