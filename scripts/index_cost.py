"""What each index and the count trigger of the job table cost a job insert (issue 23): thread CPU per
job (its job row, history row and applied-request row; batches of 256 in one transaction each, WAL
with synchronous=NORMAL like the write server), on copies of a fresh DB made by `db init` (and with
``PREFILL`` jobs in it), with the schema as is, with one index or the trigger dropped, and with
multi-row INSERTs instead of executemany.  The schema is not changed by this: numbers for its owner.

    python scripts/index_cost.py [PREFILL] [ROUNDS]      # e.g. 0 30, or 100000 30
"""
import sqlite3, sys, time, uuid, shutil, tempfile, subprocess, os, json, random
PREFILL = int(sys.argv[1]) if len(sys.argv) > 1 else 0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
base = tempfile.mkdtemp(prefix="idx-")
subprocess.run([os.path.join(os.path.dirname(sys.executable), "db"), "init", base + "/x", "--db-type", "sqlite3"], check=True, capture_output=True)
src = base + "/x/db.sqlite3"
def job_rows(n, t):
    out = []
    for i in range(n):
        jid = str(uuid.uuid4())
        out.append((jid, f"cap-{i}", "capacity", "python sim.py", f"--n {i}", "", "CREATED", "", f"data/capacity/cap-{i}_{jid[:8]}", 1, 1, 1, 1.0, "{}", "[]", "[]", "{}", t, t))
    return out
JOBSQL = 'INSERT INTO job (id,name,workflow,application,args,description,state,state_message,working_directory,num_nodes,ranks_per_node,threads_per_rank,wall_time_minutes,environ,parents,tags,data,created_at,updated_at) VALUES (' + ",".join("?" * 19) + ")"
HIST = 'INSERT INTO job_state_change (job_key,time,from_state,to_state,message) VALUES ((SELECT key FROM job WHERE id = ?),?,?,?,?)'
APPL = 'INSERT INTO applied_request (request_id,applied_at,response) VALUES (?,?,?)'
if PREFILL:
    c = sqlite3.connect(src, isolation_level=None)
    c.execute("PRAGMA journal_mode=wal"); c.execute("PRAGMA synchronous=OFF")
    t = time.time() - 86400
    for s in range(0, PREFILL, 10000):
        c.execute("BEGIN")
        rows = job_rows(10000, t)
        c.executemany(JOBSQL, rows)
        c.executemany(HIST, [(r[0], t, None, "CREATED", "created") for r in rows])
        c.executemany(APPL, [(uuid.uuid4().hex, t, '{"job":"x"}') for r in rows])
        c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)"); c.close()
ixs = [r[0] for r in sqlite3.connect(src).execute("select name from sqlite_master where type='index' and tbl_name in ('job','job_state_change','applied_request') and sql is not null")]
variants = [("as is", None)] + [("without trigger job_count_insert", "DROP TRIGGER job_count_insert")] + [(f"without index {i}", f"DROP INDEX {i}") for i in ixs] + [("without the trigger and all 9 secondary indexes", "DROP TRIGGER job_count_insert;" + ";".join(f"DROP INDEX {i}" for i in ixs if i.startswith("job_") and not i.startswith("job_state_change"))), ("without all 9 secondary indexes of job", ";".join(f"DROP INDEX {i}" for i in ixs if i.startswith("job_") and not i.startswith("job_state_change")))]
def multi(c, sql, rows):
    head, row = sql.rsplit(" VALUES ", 1)
    for s in range(0, len(rows), 500):
        page = rows[s:s+500]
        c.execute(head + " VALUES " + ",".join([row] * len(page)), [v for r in page for v in r])
def measure(drop, many=False, temp=False):
    d = tempfile.mkdtemp(dir=base); f = d + "/db.sqlite3"
    shutil.copy(src, f)
    c = sqlite3.connect(f, isolation_level=None)
    c.execute("PRAGMA journal_mode=wal"); c.execute("PRAGMA synchronous=NORMAL"); c.execute("PRAGMA cache_size=-65536")
    if drop: c.executescript(drop)
    if temp: c.execute("PRAGMA temp_store=MEMORY")
    ex = (lambda sql, rows: multi(c, sql, rows)) if many else c.executemany
    per = []
    for r in range(ROUNDS):
        t = time.time(); rows = job_rows(256, t)
        hist = [(x[0], t, None, "CREATED", "created") for x in rows]
        appl = [(uuid.uuid4().hex, t, '{"job":"%s","state":"CREATED","state_message":"","updated_at":%r,"rest":"0123456789abcdef0123456789abcdef"}' % (x[0], t)) for x in rows]
        t0 = time.thread_time()
        c.execute("BEGIN IMMEDIATE"); ex(JOBSQL, rows); ex(HIST, hist); ex(APPL, appl); c.execute("COMMIT")
        per.append(1e6 * (time.thread_time() - t0) / 256)
    c.close(); shutil.rmtree(d)
    per.sort(); return per[len(per) // 2]
res = {}
for rep in range(2):
    for name, drop in variants:
        res.setdefault(name, []).append(measure(drop))
    res.setdefault("as is, multi-row INSERTs (500 rows a statement)", []).append(measure(None, many=True))
    res.setdefault("as is, temp_store=MEMORY", []).append(measure(None, temp=True))
    res.setdefault("without trigger, multi-row INSERTs", []).append(measure("DROP TRIGGER job_count_insert", many=True))
    res.setdefault("without all 9 secondary indexes of job, multi-row INSERTs", []).append(measure(variants[-1][1], many=True))
ref = min(res["as is"])
print(f"prefill {PREFILL} jobs; thread CPU per job (job+history+applied rows), min of 2 medians of {ROUNDS} batches of 256")
for name, v in res.items():
    print(f"  {min(v):7.1f} us  {min(v)-ref:+6.1f}  {name}")
shutil.rmtree(base)
