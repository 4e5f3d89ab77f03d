"""The targets of issue 22 that ``db bench --scale`` measures, and its markdown table and plot.

Each target: the key of the measured value, what is measured, the target as text and a check
``(value, row, first_row) -> bool`` (``first_row``: the same backend at its smallest size, for a
target stated against the DB's growth).  A value of None is "not measured" (a step that failed or
was skipped says why in the row's ``notes``).
"""

TARGETS = [
    ("writer_p99_ratio", "a writer's p99 during a full `db ls` / with no reads (same run)", "≤ 2x",
     lambda v, row, first: v <= 2),
    ("ls_ratio", "full `db ls`: time / its bare SQL time", "≤ 3x", lambda v, row, first: v <= 3),
    ("ls_client_mb", "full `db ls`: client peak RSS MB", "< 200", lambda v, row, first: v < 200),
    ("ls_server_mb", "full `db ls`: servers' peak RSS MB (write server, read service)", "< 200",
     lambda v, row, first: v < 200),
    ("cli_startup_s", "CLI start-up: `db ls --limit 1` s (best of 5)", "< 0.3", lambda v, row, first: v < 0.3),
    ("state_counts_ms", "jobs.state_counts() ms", "< 300", lambda v, row, first: v < 300),
    ("tag_limit20_ms", "jobs.filter(tags=['gpu'], limit=20) ms", "< 200", lambda v, row, first: v < 200),
    ("id_prefix_ms", "job by 8-character id prefix ms", "< 100", lambda v, row, first: v < 100),
    ("name_glob_ms", "jobs.filter(name_like='sim-0001*') ms", "< 300", lambda v, row, first: v < 300),
    ("changed_since_ms", "jobs.filter(since=T, changed=True) ms, 100 jobs changed",
     "∝ rows changed: ≤ 2x at the smallest size", lambda v, row, first: v <= 2 * first["changed_since_ms"]),
    ("dash_first_ms", "jobs dashboard, first request ms", "< 300", lambda v, row, first: v < 300),
    ("dash_filtered_ms", "jobs dashboard, workflow + state, p50 ms", "< 300", lambda v, row, first: v < 300),
    ("dash_glob_ms", "jobs dashboard, name glob + since, p50 ms", "< 300", lambda v, row, first: v < 300),
    ("records_list_ms", "records list, page 1, p50 ms", "< 200", lambda v, row, first: v < 200),
    ("records_search_ms", "records search, p50 ms", "< 200", lambda v, row, first: v < 200),
    ("records_page_ms", "records, last page, p50 ms", "< 200", lambda v, row, first: v < 200),
    ("bulk_ratio", "bulk_create rate, this DB / a fresh DB (same run)", "≥ 0.9x", lambda v, row, first: v >= 0.9),
    ("writers_ratio", "N writers' rate, this DB / a fresh DB (same run)", "≥ 0.9x", lambda v, row, first: v >= 0.9),
    ("copy_items_per_s", "`db copy` items/s (verified, source server running)", "≥ 20,000",
     lambda v, row, first: v >= 20_000),
    ("export_lines_per_s", "`db export` lines/s", "≥ 30,000", lambda v, row, first: v >= 30_000),
    ("lost_or_duplicated", "writes lost or duplicated, copy rows missing (read back)", "0",
     lambda v, row, first: v == 0),
]

#: measured beside the targets, for the reader of the table
INFO = [
    ("jobs", "jobs in the DB (after the run)"),
    ("records", "records in the DB"),
    ("load_s", "set-up: fast load of this step, s"),
    ("measure_s", "measuring this size, s"),
    ("ls_s", "full `db ls` s (CPU s)"),
    ("bare_sql_s", "bare SQL listing s"),
    ("writer_p99_ms", "a writer's p99 ms: no reads / during `db ls`"),
    ("bulk_jobs_per_s", "bulk_create jobs/s: this DB / fresh"),
    ("writers_per_s", "N writers' jobs/s: this DB / fresh"),
    ("copy_s", "`db copy` s (CPU s), items"),
    ("export_s", "`db export` s (CPU s), lines"),
    ("cli_startup_cpu_s", "CLI start-up: `db ls --limit 1` CPU s (best of 5)"),
    ("cli_version_s", "`db --version` s (best of 5)"),
    ("db_size_mb", "database size MB"),
]


def read_results(paths):
    """``{backend: {size: row}}`` from files of earlier runs: a ``--json`` table, or a run's stderr,
    whose JSON lines are the rows as each size finished (a run stopped part way keeps those)."""
    import json

    table = {}
    for path in paths:
        text = open(path).read()
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None
        if isinstance(whole, dict):
            for backend, rows in whole.items():
                table.setdefault(backend, {}).update(rows)
            continue
        for line in text.splitlines():
            if line.startswith("{") and '"backend"' in line:
                row = json.loads(line)
                table.setdefault(row.pop("backend"), {})[str(row.pop("size"))] = row
    return table


def verdict(key, row, first):
    """'met', 'not met', or '' when not measured (or not comparable)."""
    for name, _what, _target, check in TARGETS:
        if name == key:
            value = row.get(key)
            if value is None:
                return ""
            try:
                return "met" if check(value, row, first) else "not met"
            except (KeyError, TypeError):
                return ""
    raise KeyError(key)


def _cell(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def columns(table):
    """[(backend, size)] in the order of the table: each backend, sizes ascending."""
    return [(backend, size) for backend in table for size in sorted(table[backend], key=int)]


def format_table(table):
    """The markdown table of ``{backend: {size: row}}``: each target, its target, and per column
    the value with met / not met."""
    cols = columns(table)
    head = "| measured | target | " + " | ".join(f"{b} {int(s):,}" for b, s in cols) + " |"
    lines = [head, "|---|---|" + "---:|" * len(cols)]
    for key, what, target, _check in TARGETS:
        cells = []
        for backend, size in cols:
            row = table[backend][size]
            first = table[backend][min(table[backend], key=int)]
            said = verdict(key, row, first)
            cells.append(_cell(row.get(key)) + (f" {'✓' if said == 'met' else '✗'}" if said else ""))
        lines.append(f"| {what} | {target} | " + " | ".join(cells) + " |")
    for key, what in INFO:
        lines.append(f"| {what} | | " + " | ".join(_cell(table[b][s].get(key)) for b, s in cols) + " |")
    notes = [f"- {b} {int(s):,}: {note}" for b, s in cols for note in table[b][s].get("notes", [])]
    return "\n".join(lines + ([""] + notes if notes else []))


PLOTTED = [
    ("ms (grey: the targets, 100 to 300 ms)", ["state_counts_ms", "tag_limit20_ms", "id_prefix_ms", "name_glob_ms", "changed_since_ms",
            "dash_first_ms", "dash_filtered_ms", "records_list_ms", "records_search_ms", "records_page_ms"]),
    ("ratio (grey: ≥ 0.9, ≤ 2, ≤ 3)", ["writer_p99_ratio", "ls_ratio", "bulk_ratio", "writers_ratio"]),
    ("items or lines / s (grey: 20,000 and 30,000)", ["copy_items_per_s", "export_lines_per_s"]),
]
#: the grey lines of each panel: the targets
LEVELS = [(100, 200, 300), (0.9, 2, 3), (20_000, 30_000)]


def plot(table, filename):
    """Three panels against the number of jobs: the reads (ms), the ratios, copy and export rates;
    SQLite solid, PostgreSQL dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    whats = {key: what for key, what, _t, _c in TARGETS}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    for ax, (unit, keys), levels in zip(axes, PLOTTED, LEVELS):
        for backend in table:
            sizes = sorted(table[backend], key=int)
            for number, key in enumerate(keys):
                points = [(int(s), table[backend][s].get(key)) for s in sizes]
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", linestyle="-" if backend == "sqlite3" else "--",
                            color=f"C{number}", label=f"{backend}: {whats[key]}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for level in levels:
            ax.axhline(level, color="grey", linewidth=0.5)
        ax.set_xlabel("jobs in the DB")
        ax.set_ylabel(unit)
        ax.legend(fontsize=6)
    fig.suptitle("db bench --scale: issue 22's targets as the DB grows (SQLite solid, PostgreSQL dashed)")
    fig.tight_layout()
    fig.savefig(filename, dpi=100)
    plt.close(fig)
