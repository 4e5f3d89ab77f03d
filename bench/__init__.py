"""The benchmarks behind `db bench` (also `python scripts/bench_writers.py`).

``writers`` runs N writer processes per mode side by side, ``worker`` is one
writer process, and ``ceiling`` is the server that answers at once (the
messaging ceiling).  Nothing here is imported by job processes.
"""
