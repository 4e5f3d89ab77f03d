"""What the order of the job keys costs an insert on a grown SQLite database (issue 22): a prototype,
the schema is not changed by it.

Builds synthetic databases of N jobs from the schema ``db init`` makes (a fresh DB directory is made
in OUT/schema) straight through ``sqlite3``: ``text``, the schema as is (the history's and the tag
table's rows keyed by the job's UUID text), and ``int``, the history's ``job_rowid`` and the tag
table's ``(job_rowid, tag)`` key holding the job's integer rowid instead.  Then it inserts ROUNDS
batches of BATCH jobs (job row, CREATED and READY history rows, the tag ``gpu`` on 1 in 3, an
applied-request row per job when BATCH is 256 (the server's writes), else one per batch (a
``bulk_create``), multi-row INSERTs of 256 as the server's) into each variant, twice, in turn,
and prints per job: the thread CPU and wall of the inserts and COMMIT (WAL, synchronous=NORMAL,
64 MB page cache), the WAL frames written, and the CPU and wall of a checkpoint after each batch.

Variants (comma-separated, default ``text,int``): ``text``, ``int``, and suffixes:
``-v7`` new job ids in time order (UUIDv7 layout: 48 bits of milliseconds first),
``-notrig`` without the counts trigger ``job_count_insert``, ``-cache512`` a 512 MB page cache,
``-sorted`` each batch's rows in id order, ``-acN`` SQLite's own checkpoint every N pages instead of one after each batch.

    python scripts/key_order_cost.py N OUT [ROUNDS] [BATCH] [VARIANTS]
    python scripts/key_order_cost.py 1000000 /tmp/keys 3 5000 text,int,text-v7,int-v7
"""
import os, sqlite3, sys, time, uuid, shutil, subprocess, statistics, random
N = int(sys.argv[1]); OUT = sys.argv[2]; ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 6
BATCH = int(sys.argv[4]) if len(sys.argv) > 4 else 5000
SCHEMA_SRC = os.path.join(OUT, "schema", "db.sqlite3")
if not os.path.exists(SCHEMA_SRC):
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "db"), "init", os.path.dirname(SCHEMA_SRC),
                    "--db-type", "sqlite3"], check=True, capture_output=True)
def schema(kind):
    src = sqlite3.connect(SCHEMA_SRC)
    out = []
    for name, sql in src.execute("select name, sql from sqlite_master where sql is not null and name not like 'sqlite_%' and name not like 'record_fts_%' order by rowid"):
        if kind == "int":
            if name == "job_state_change":
                sql = sql.replace('"job_id" VARCHAR(36) NOT NULL', '"job_rowid" INTEGER NOT NULL').replace('FOREIGN KEY ("job_id") REFERENCES "job" ("id")', 'FOREIGN KEY ("job_rowid") REFERENCES "job" ("rowid")')
                sql = sql.replace(', FOREIGN KEY ("job_rowid") REFERENCES "job" ("rowid") ON DELETE CASCADE', '')
            if name == "job_state_change_job_id":
                sql = 'CREATE INDEX "job_state_change_job_rowid" ON "job_state_change" ("job_rowid")'
            if name == "job_tag":
                sql = 'CREATE TABLE "job_tag" ("job_rowid" INTEGER NOT NULL, "tag" VARCHAR(255) NOT NULL, "created_at" REAL, PRIMARY KEY ("job_rowid", "tag")) WITHOUT ROWID'
            if name == "job_tag_tag_created_at":
                sql = 'CREATE INDEX "job_tag_tag_created_at" ON "job_tag" ("tag", "created_at", "job_rowid")'
        out.append(sql)
    return out
JOBCOLS = "id,name,workflow,application,args,description,state,state_message,working_directory,num_nodes,ranks_per_node,threads_per_rank,wall_time_minutes,environ,parents,tags,data,created_at,updated_at"
V7 = False
def uuid7():
    ms = time.time_ns() // 1_000_000
    r = int.from_bytes(os.urandom(10), "big")
    v = (ms << 80) | (0x7 << 76) | ((r >> 68) & 0xFFF) << 64 | (0b10 << 62) | (r & ((1 << 62) - 1))
    return str(uuid.UUID(int=v))
def jobs(start, n, t):
    rows = []
    for i in range(start, start + n):
        jid = uuid7() if V7 else str(uuid.uuid4())
        rows.append((jid, f"sim-{i:07d}", f"wf-{i % 10}", "bench", f"--seed {i}", "", "READY", "", f"data/wf/sim-{i}_{jid[:8]}", 1, 1, 1, 0.0, "{}", "[]", '["gpu"]' if i % 3 == 0 else "[]", "{}", t, t))
    return rows
def multi(c, head, rows, width):
    for s in range(0, len(rows), 256):
        page = rows[s:s + 256]
        c.execute(f"{head} VALUES " + ",".join(["(" + ",".join("?" * width) + ")"] * len(page)), [v for r in page for v in r])
SORTED = False
def insert(c, kind, start, n, t, applied_per_job):
    rows = jobs(start, n, t)
    if SORTED: rows.sort()
    multi(c, f"INSERT INTO job ({JOBCOLS})", rows, 19)
    if kind == "int":
        last = c.execute("select max(rowid) from job").fetchone()[0]
        keys = list(range(last - n + 1, last + 1))  # rowids of a fresh multi-row insert are consecutive here
        kcol = "job_rowid"
    else:
        keys = [r[0] for r in rows]; kcol = "job_id"
    hist = [(k, t, None, "CREATED", "") for k in keys] + [(k, t, "CREATED", "READY", "") for k in keys]
    multi(c, f"INSERT INTO job_state_change ({kcol},time,from_state,to_state,message)", hist, 5)
    tags = [(k, "gpu", t) for k, r in zip(keys, rows) if r[15] != "[]"]
    multi(c, f"INSERT INTO job_tag ({kcol},tag,created_at)", tags, 3)
    na = n if applied_per_job else 1
    multi(c, "INSERT INTO applied_request (request_id,applied_at,response)", [(uuid.uuid4().hex, t, '{"job":"x"}') for _ in range(na)], 3)
def build(kind):
    d = f"{OUT}/{kind}"; os.makedirs(d, exist_ok=True); f = f"{d}/db.sqlite3"
    if os.path.exists(f): return f
    c = sqlite3.connect(f + ".tmp", isolation_level=None)
    c.execute("PRAGMA journal_mode=wal"); c.execute("PRAGMA synchronous=OFF"); c.execute("PRAGMA cache_size=-262144")
    for s in schema(kind): c.execute(s)
    t = time.time() - 86400
    for s in range(0, N, 20000):
        c.execute("BEGIN"); insert(c, kind, s, min(20000, N - s), t, True); c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)"); c.close(); os.rename(f + ".tmp", f)
    return f
def measure(f, variant, start, applied_per_job, cache_mb=64):
    global V7, SORTED
    kind = variant.split("-")[0]
    V7 = variant.endswith("-v7")
    SORTED = variant.endswith("-sorted")
    if variant.endswith("-notrig"):
        f2 = f.replace("db.sqlite3", "notrig.sqlite3"); shutil.copy(f, f2); f = f2
        cc = sqlite3.connect(f); cc.execute("DROP TRIGGER job_count_insert"); cc.commit(); cc.close()
    if variant.endswith("-cache512"): cache_mb = 512
    auto = int(variant.split("-ac")[1]) if "-ac" in variant else 0
    c = sqlite3.connect(f, isolation_level=None)
    c.execute("PRAGMA journal_mode=wal"); c.execute("PRAGMA synchronous=NORMAL"); c.execute(f"PRAGMA cache_size=-{1024*cache_mb}")
    c.execute(f"PRAGMA wal_autocheckpoint={auto}")
    c.execute("PRAGMA foreign_keys=1")
    wal = f + "-wal"
    res = []
    for r in range(ROUNDS):
        t = time.time()
        w0 = os.path.getsize(wal) if os.path.exists(wal) else 0
        c0, t0 = time.thread_time(), time.perf_counter()
        c.execute("BEGIN IMMEDIATE"); insert(c, kind, start + r * BATCH, BATCH, t, applied_per_job); c.execute("COMMIT")
        cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
        frames = (os.path.getsize(wal) - w0) / (4096 + 24)
        c0, t0 = time.thread_time(), time.perf_counter()
        if not auto: c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ck_cpu, ck_wall = time.thread_time() - c0, time.perf_counter() - t0
        res.append((1e6 * cpu / BATCH, 1e6 * wall / BATCH, frames / BATCH, 1e6 * ck_cpu / BATCH, 1e6 * ck_wall / BATCH))
    c.close()
    if variant.endswith("-notrig"): os.remove(f)
    return res
if __name__ == "__main__":
    kinds = sys.argv[5].split(",") if len(sys.argv) > 5 else ["text", "int"]
    files = {k: build(k.split("-")[0]) for k in kinds}
    print("built", {k: os.path.getsize(f) // 1_000_000 for k, f in files.items()}, "MB", flush=True)
    out = {k: [] for k in kinds}
    for rep in range(2):
        for k in kinds:
            out[k] += measure(files[k], k, N + 10_000_000 * (rep + 1), BATCH == 256)
    print(f"N={N} batch={BATCH} rounds={ROUNDS}x2, per job: median [min]")
    for k in kinds:
        cols = list(zip(*out[k]))
        names = ["insert+commit CPU us", "wall us", "WAL frames", "checkpoint CPU us", "checkpoint wall us"]
        print(k, "  ".join(f"{n} {statistics.median(v):.2f} [{min(v):.2f}] mean {statistics.mean(v):.2f}" for n, v in zip(names, cols)))
