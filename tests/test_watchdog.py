"""The watchdog never gives up, and one server runs per DB directory, also across hosts.

Real watchdogs and servers meet real faults, injected as root the way CI runs (``ulimit -u``
and ``chmod`` do not stop root):

* fork refused: ``strace --inject`` makes every clone/fork of the watchdog fail with EAGAIN;
* ``log/`` removed under the running watchdog;
* a read-only DB directory: a read-only bind mount over it (Linux refuses ``remount,ro`` of a
  file system while a file on it is open for writing, and the watchdog always holds its lock
  file that way; a fresh bind mount has no writers, so it can turn read-only under them);
* a watchdog killed with SIGKILL and the address file deleted: the orphan server is found by
  the lock it holds (``server.lock``);
* two hosts on one shared directory: two FUSE mounts (``bindfs``) of one directory, which do
  not share ``flock``, seen from two network and UTS namespaces with their own host names, so
  that only the heartbeat can keep the second host from starting a second server.

Every process and mount a test starts is stopped (unmounted) by a finalizer, also on failure.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

import balsamdb
from balsamdb.dbdir import DBDirectory

from helpers import alive as _alive
from helpers import address, db_cli, kill_everything, processes_for, skip_or_fail, stop_processes, wait_for


# -- helpers -------------------------------------------------------------------------------------------

def _roles(path):
    """Pids of the watchdogs and write servers whose command line names ``path``."""
    found = {"watchdog": [], "server": []}
    for proc in processes_for(path):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "balsamdb.server.supervisor.watchdog" in cmd:
            found["watchdog"].append(proc.pid)
        elif "balsamdb.server.writer.server" in cmd:
            found["server"].append(proc.pid)
    return found


def _running_with_new_epoch(path, old_epoch):
    info = address(path)
    if info.get("state") == "running" and info.get("epoch") != old_epoch and _alive(info["server"]):
        return info
    return None


def _log(path, name="watchdog.log"):
    try:
        return (Path(path) / "log" / name).read_text(errors="replace")
    except OSError:
        return ""


def _status(path):
    proc = db_cli("dbserver", "--status", "--json", "--path", path)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc


@pytest.fixture
def server(tmp_path):
    """A SQLite DB directory with its server running; everything of it stopped afterwards."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    try:  # also when the start fails or times out
        db_cli("dbserver", "--path", path, check=True)
        yield path
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


class _ForkRefused:
    """Every clone/fork of ``pid`` fails with EAGAIN while this is entered (``strace --inject``)."""

    SYSCALLS = "clone,clone3,fork,vfork"

    def __init__(self, pid):
        self.pid = pid
        self.tracer = None

    def _traced(self):
        with open(f"/proc/{self.pid}/status") as status:
            return "TracerPid:\t0\n" not in status.read()

    def __enter__(self):
        if shutil.which("strace") is None:
            skip_or_fail("strace is needed to make fork fail under the watchdog (apt-get install strace)")
        self.tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(self.pid), "-e", f"trace={self.SYSCALLS}",
             "-e", f"inject={self.SYSCALLS}:error=EAGAIN"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: self.tracer.poll() is not None or self._traced(), 10, "strace to attach")
        except BaseException:
            self.__exit__()
            raise
        if self.tracer.poll() is not None:
            skip_or_fail(f"strace cannot attach to the watchdog: {self.tracer.stderr.read().strip()}")
        return self

    def __exit__(self, *exc):
        if self.tracer is None:
            return
        if self.tracer.poll() is None:
            self.tracer.send_signal(signal.SIGINT)  # strace detaches cleanly on SIGINT
            try:
                self.tracer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.tracer.kill()
                self.tracer.wait()
        if psutil.pid_exists(self.pid):
            wait_for(lambda: not psutil.pid_exists(self.pid) or not self._traced(), 10, "strace to detach")
        self.tracer = None


def _mount(*args):
    return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def read_only_switch(tmp_path):
    """``switch(path, read_only)``: a bind mount of ``path`` onto itself, made read-only or writable
    again; unmounted by the finalizer after every process of a DB directory under it is stopped."""
    mounted = []

    def switch(path, read_only):
        if path not in mounted:
            made = _mount("--bind", path, path)
            if made.returncode != 0:
                skip_or_fail(f"cannot bind-mount {path} (needs root): {made.stderr.strip()}")
            mounted.append(path)
        done = _mount("-o", f"remount,bind,{'ro' if read_only else 'rw'}", path)
        assert done.returncode == 0, done.stderr

    try:
        yield switch
    finally:
        for path in mounted:
            kill_everything(path)
            subprocess.run(["umount", str(path)], capture_output=True)
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- 1. the watchdog never gives up ---------------------------------------------------------------------

def test_fork_refused_is_logged_and_retried_until_it_works(server):
    """A restart whose fork fails (EAGAIN, as under `ulimit -u`) is logged and retried with the
    backoff; the watchdog stays, the address file says restarting (never stopped), `--status`
    exits 2; once forks work again, the server is back and takes writes."""
    path = server
    info = address(path)
    with _ForkRefused(info["watchdog"]["pid"]):
        os.kill(info["server"]["pid"], signal.SIGKILL)
        wait_for(lambda: _log(path).count("cannot start the server") >= 3, 30,
                 "three refused starts in watchdog.log")
        assert "Resource temporarily unavailable" in _log(path) or "EAGAIN" in _log(path), _log(path)[-2000:]
        assert _alive(info["watchdog"]), "the watchdog gave up when fork was refused"
        now = address(path)
        assert now["state"] == "restarting" and "stop" not in now.get("reason", ""), now
        code, status, proc = _status(path)
        assert code == 3, (code, proc.stdout, proc.stderr)
        refused = _log(path).count("cannot start the server")
    detached = time.monotonic()
    back = wait_for(lambda: _running_with_new_epoch(path, info["epoch"]), 30,
                    "the watchdog to start a server once fork works again")
    print(f"\nfork refused: {refused} starts refused; server back {time.monotonic() - detached:.2f} s "
          f"after forks work again", flush=True)
    assert back["watchdog"] == info["watchdog"]
    with balsamdb.connect(path) as db:
        db.jobs.create(name="after-eagain", make_workdir=False)
        assert db.last_route == "server" and db.ping()["pid"] == back["server"]["pid"]


def test_log_dir_removed_is_recreated_and_the_server_restarted(server):
    """`rm -r log/` under a running watchdog, then the server dies: the watchdog recreates log/,
    says so in a new watchdog.log, and restarts the server (whose own log and stderr are back)."""
    path = server
    info = address(path)
    shutil.rmtree(path / "log")
    os.kill(info["server"]["pid"], signal.SIGKILL)
    back = wait_for(lambda: _running_with_new_epoch(path, info["epoch"]), 30,
                    "a new server after log/ was removed")
    assert _alive(info["watchdog"]) and back["watchdog"] == info["watchdog"]
    assert "log/ was removed" in _log(path), _log(path)
    assert (path / "log" / "server.log").exists() and (path / "log" / "server.err").exists()
    assert "write server pid %s listening" % back["server"]["pid"] in _log(path, "server.log")
    with balsamdb.connect(path) as db:
        db.jobs.create(name="after-log-removed", make_workdir=False)
        assert db.last_route == "server"


def test_read_only_db_directory_is_waited_out(tmp_path, read_only_switch):
    """The DB directory turns read-only, then the server dies: each restart is refused (no server
    is started on a database it could not write), logged with its cause, and retried with the
    backoff; the address file and heartbeat errors are logged once each, not at every check; the
    watchdog stays. Once the directory is writable again, the server is back and takes writes."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    db_cli("dbserver", "--path", path, check=True)
    info = address(path)
    read_only_switch(path, True)
    try:
        os.kill(info["server"]["pid"], signal.SIGKILL)
        wait_for(lambda: _log(path).count("cannot start the server") >= 3, 60,
                 "three refused starts on the read-only directory")
        log = _log(path)
        assert "Read-only file system" in log, log[-3000:]
        assert log.count("cannot write the address file") == 1, "each cause is logged once, not at every check"
        assert _alive(info["watchdog"]), "the watchdog gave up on a read-only DB directory"
        assert address(path)["state"] == "running"  # as it was: it could not be rewritten, never "stopped"
    finally:
        read_only_switch(path, False)
    back = wait_for(lambda: _running_with_new_epoch(path, info["epoch"]), 30,
                    "a server once the directory is writable again")
    assert back["watchdog"] == info["watchdog"]
    wait_for(lambda: "the address file can be written again" in _log(path), 5, "the watchdog to say so")
    with balsamdb.connect(path) as db:
        db.jobs.create(name="after-read-only", make_workdir=False)
        assert db.last_route == "server" and db.ping()["pid"] == back["server"]["pid"]
    db_cli("dbserver", "--stop", "--path", path, check=True)


def test_logging_falls_back_to_stderr_while_log_dir_cannot_be_recreated(tmp_path, read_only_switch, capfd):
    """The log handler of the server processes: log/ removed from a read-only DB directory means
    records go to stderr (syslog where /dev/log exists) rather than nowhere; once the directory
    is writable, log/ is recreated and the file written again."""
    import logging

    from balsamdb.server.logs import ResilientFileHandler

    path = tmp_path / "db"
    (path / "log").mkdir(parents=True)
    handler = ResilientFileHandler(path / "log" / "watchdog.log")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("balsamdb.test.fallback")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("first")
        shutil.rmtree(path / "log")
        read_only_switch(path, True)
        logger.warning("while read-only")
        err = capfd.readouterr().err
        if not os.path.exists("/dev/log"):
            assert "while read-only" in err and "Read-only file system" in err, err
        read_only_switch(path, False)
        logger.warning("writable again")
        text = (path / "log" / "watchdog.log").read_text()
        assert "writable again" in text and "log/ was removed; recreated" in text, text
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_a_failing_first_start_still_fails_and_claims_no_stop(tmp_path):
    """A configuration error (an interface this host does not have) makes `db dbserver` fail with
    the log's last lines, as before; the address file says the first start failed, not that someone
    stopped it, and no process of the DB directory is left."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    try:
        started = db_cli("dbserver", "--path", path, "--bind", "192.0.2.1")  # TEST-NET-1: not ours
        assert started.returncode == 1, started.stdout + started.stderr
        assert "watchdog exited with code 1" in started.stderr, started.stderr
        assert "server.err" in started.stderr and "192.0.2.1" in started.stderr, started.stderr
        reason = address(path).get("reason", "")
        assert "first start failed" in reason and "--stop" not in reason, reason
        assert _roles(path) == {"watchdog": [], "server": []}
    finally:
        kill_everything(path)


# -- 2. status, and the flags of db dbserver ---------------------------------------------------------------

def test_status_exit_codes_and_a_dead_watchdog(server):
    """--status exits 0 while running and supervised, 3 with a dead watchdog (and says so), 1 after
    a stop, which prints no watchdog pid of the dead process."""
    path = server
    info = address(path)
    assert _status(path)[0] == 0
    os.kill(info["watchdog"]["pid"], signal.SIGKILL)
    wait_for(lambda: not _alive(info["watchdog"]), 10, "the watchdog to die")
    text = db_cli("dbserver", "--status", "--path", path)
    assert text.returncode == 3, text.stdout
    assert f"server up, unsupervised: watchdog pid {info['watchdog']['pid']} is dead" in text.stdout, text.stdout
    db_cli("dbserver", "--stop", "--path", path, check=True)
    after = db_cli("dbserver", "--status", "--path", path)
    assert after.returncode == 1, after.stdout
    assert "watchdog" not in after.stdout and str(info["watchdog"]["pid"]) not in after.stdout, after.stdout


def test_contradictory_flags_are_refused(dbdir):
    both = db_cli("dbserver", "--stop", "--status", "--path", dbdir)
    assert both.returncode == 2 and "--stop and --status cannot be combined" in both.stderr, both.stderr
    port = db_cli("dbserver", "--stop", "--port", "5000", "--path", dbdir)
    assert port.returncode == 2 and "--port only applies to starting" in port.stderr, port.stderr
    forced = db_cli("dbserver", "--status", "--force", "--bind", "0.0.0.0", "--path", dbdir)
    assert forced.returncode == 2 and "--bind, --force only apply" in forced.stderr, forced.stderr


def test_a_start_while_one_runs_names_the_options_not_applied(server):
    path = server
    info = address(path)
    port = int(info["address"].rsplit(":", 1)[1])
    other = port + 1 if port < 65535 else port - 1
    again = db_cli("dbserver", "--port", other, "--encrypt", "--path", path, check=True)
    assert f"a server already runs for {path} at {info['address']}" in again.stdout, again.stdout
    assert f"host {info['host']}, watchdog pid {info['watchdog']['pid']}" in again.stdout
    assert f"not applied: --port {other} (it has port {port}), --encrypt (it has no encryption)" in again.stdout, \
        again.stdout
    same = db_cli("dbserver", "--port", port, "--path", path, "--json", check=True)
    assert json.loads(same.stdout)["not_applied"] == []


# -- 3. one server per DB directory -----------------------------------------------------------------------

def test_an_orphan_without_address_file_is_stopped_by_a_new_watchdog_and_by_stop(any_dbdir, backend):
    """`kill -9` of the watchdog and `rm dbwriter_address`: the orphan server is found by its lock.
    A new `db dbserver` stops it before starting (one server, one watchdog); after the same fault
    again, `db dbserver --stop` leaves no process of the DB directory."""
    path = any_dbdir
    db_cli("dbserver", "--path", path, check=True)
    try:
        first = address(path)
        os.kill(first["watchdog"]["pid"], signal.SIGKILL)
        wait_for(lambda: not _alive(first["watchdog"]), 10, "the watchdog to die")
        (path / "dbwriter_address").unlink()
        code, status, proc = _status(path)
        assert code == 3 and f"pid {first['server']['pid']}" in status["summary"], proc.stdout
        db_cli("dbserver", "--path", path, check=True)
        second = address(path)
        assert not _alive(first["server"]), "the orphan server still runs beside the new one"
        roles = _roles(path)
        assert roles == {"watchdog": [second["watchdog"]["pid"]], "server": [second["server"]["pid"]]}, roles
        os.kill(second["watchdog"]["pid"], signal.SIGKILL)
        wait_for(lambda: not _alive(second["watchdog"]), 10, "the watchdog to die")
        (path / "dbwriter_address").unlink()
        stopped = db_cli("dbserver", "--stop", "--path", path, check=True)
        assert str(second["server"]["pid"]) in stopped.stdout, stopped.stdout
        assert _roles(path) == {"watchdog": [], "server": []}
        assert _status(path)[0] == 1
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_a_second_server_refuses_while_the_first_holds_its_lock(server):
    """Started by hand beside a running one, a write server exits at once: the lock is the proof."""
    path = server
    info = address(path)
    second = subprocess.run([sys.executable, "-m", "balsamdb.server.writer.server", "--path", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 3 and not second.stdout, (second.returncode, second.stdout, second.stderr)
    assert f"another write server holds {path / 'server.lock'} (pid {info['server']['pid']}" in \
        _log(path, "server.log")


# -- 4. across hosts ---------------------------------------------------------------------------------------

class _Hosts:
    """Two 'hosts' on one shared directory: FUSE mounts (bindfs) of it that do not share flock,
    used from network + UTS namespaces with their own host names (made by `unshare`)."""

    def __init__(self, tmp_path):
        self.shared = tmp_path / "shared"
        self.mounts = {"host-a": tmp_path / "host-a", "host-b": tmp_path / "host-b"}
        self.mounted = []

    def __enter__(self):
        for tool in ("bindfs", "unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                skip_or_fail(f"{tool} is needed for the two-host test (apt-get install bindfs util-linux iproute2)")
        if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
            skip_or_fail("the two-host test needs root and /dev/fuse")
        self.shared.mkdir()
        for mount in self.mounts.values():
            mount.mkdir()
            made = subprocess.run(["bindfs", str(self.shared), str(mount)], capture_output=True, text=True)
            if made.returncode != 0:
                self.__exit__()
                skip_or_fail(f"bindfs cannot mount here: {made.stderr.strip()}")
            self.mounted.append(mount)
        return self

    def db(self, host):
        return self.mounts[host] / "db"

    def run(self, host, *args, env=None, timeout=90):
        """`db ARGS` on ``host``: in a new network and UTS namespace named ``host`` (loopback up)."""
        script = f'hostname {host} && ip link set lo up && exec "$@"'
        cmd = ["unshare", "--uts", "--net", "--", "sh", "-c", script, "sh",
               sys.executable, "-m", "balsamdb.cli", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))

    def run_in(self, pid, *args, timeout=90):
        """`db ARGS` in the namespaces of process ``pid`` (that host's watchdog)."""
        cmd = ["nsenter", "-t", str(pid), "--uts", "--net", sys.executable, "-m", "balsamdb.cli", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def servers(self):
        """Every live write server of the shared DB directory, through either mount."""
        return [pid for host in self.mounts for pid in _roles(self.db(host))["server"]]

    def __exit__(self, *exc):
        for host in self.mounts:
            kill_everything(self.db(host))
        for mount in self.mounted:
            subprocess.run(["umount", str(mount)], capture_output=True)
            if os.path.ismount(mount):
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        self.mounted = []


STALE = 10.0  # seconds: heartbeat_stale_after in the test (the watchdog beats every 2 s)


def _backdate(path, seconds):
    """Set ``path``'s mtime ``seconds`` into the past: a file nobody touches any more, as it is after
    ``seconds`` of waiting (the heartbeat's and the server lock's age is their mtime's)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_second_host_refuses_while_the_heartbeat_is_fresh(tmp_path):
    """Host A runs the server (bound to its own loopback: host B cannot reach it). Host B's
    `db dbserver` refuses, saying where it runs and how to stop it, although B's flock and B's
    pings see nothing; it starts once A is dead and its heartbeat older than the limit. With
    --force, B starts at once and A's watchdog yields: one server at every moment after."""
    env = {"BALSAMDB_HEARTBEAT_STALE_AFTER": str(STALE)}
    with _Hosts(tmp_path) as hosts:
        DBDirectory(hosts.shared / "db").init()
        started = hosts.run("host-a", "dbserver", "--path", hosts.db("host-a"))
        assert started.returncode == 0, started.stderr
        a = address(hosts.shared / "db")
        assert a["host"] == "host-a", a

        refused = hosts.run("host-b", "dbserver", "--path", hosts.db("host-b"), env=env)
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        for words in ("runs on host host-a", f"watchdog pid {a['watchdog']['pid']}",
                      f"db dbserver --stop --path {hosts.db('host-b')}` on host-a", "heartbeat_stale_after",
                      "--force"):
            assert words in refused.stderr, (words, refused.stderr)
        assert hosts.servers() == [a["server"]["pid"]], hosts.servers()
        status = hosts.run("host-b", "dbserver", "--status", "--path", hosts.db("host-b"), env=env)
        assert status.returncode == 3 and "running on host host-a" in status.stdout, status.stdout

        # --force: B starts; A's watchdog sees B's heartbeat and stops its server and itself.
        forced = hosts.run("host-b", "dbserver", "--force", "--path", hosts.db("host-b"), env=env)
        assert forced.returncode == 0, forced.stderr
        started_b = time.monotonic()
        b = address(hosts.shared / "db")
        assert b["host"] == "host-b", b
        wait_for(lambda: not _alive(a["watchdog"]) and not _alive(a["server"]), 15,
                 "host A's watchdog and server to yield to host B")
        print(f"\ntwo hosts: host A yielded {time.monotonic() - started_b:.2f} s after host B's forced start "
              f"returned", flush=True)
        assert hosts.servers() == [b["server"]["pid"]], hosts.servers()
        assert "took this DB directory over" in _log(hosts.shared / "db")
        assert address(hosts.shared / "db")["host"] == "host-b", "host A rewrote the address file"
        elsewhere = hosts.run("host-a", "dbserver", "--stop", "--path", hosts.db("host-a"))
        assert elsewhere.returncode == 1 and "the server runs on host host-b; stop it there" in elsewhere.stderr, \
            elsewhere.stderr
        assert hosts.servers() == [b["server"]["pid"]]

        # Host B's watchdog is killed: its server stays and keeps touching server.lock, so host A
        # still refuses after the watchdog's heartbeat turned stale; once the server is killed too
        # (host B is down) and its lock is stale as well, host A starts.
        from balsamdb.server.supervisor import liveness

        shared = DBDirectory(hosts.shared / "db")
        os.kill(b["watchdog"]["pid"], signal.SIGKILL)
        wait_for(lambda: not _alive(b["watchdog"]), 10, "host B's watchdog to die")
        before = liveness.read_heartbeat(shared)["age"]
        early = hosts.run("host-a", "dbserver", "--path", hosts.db("host-a"), env=env)
        after = liveness.read_heartbeat(shared)["age"]
        assert early.returncode == 1 and "runs on host host-b" in early.stderr, (before, after, early.stderr)
        assert after < STALE, f"the refusal took so long ({before:.1f} -> {after:.1f} s) that it proves nothing"
        # Nothing beats for host B any more: rather than wait STALE s for that to show, the heartbeat is made
        # as old as it then is (its age is its mtime's); that nothing refreshed it meanwhile is checked after.
        _backdate(liveness.heartbeat_file(shared), STALE + 1)
        orphan = hosts.run("host-a", "dbserver", "--path", hosts.db("host-a"), env=env)
        assert orphan.returncode == 1, orphan.stdout
        assert liveness.read_heartbeat(shared)["age"] > STALE, "something beat for host B after its watchdog died"
        assert f"write server pid {b['server']['pid']}, its watchdog dead" in orphan.stderr, orphan.stderr
        os.kill(b["server"]["pid"], signal.SIGKILL)
        wait_for(lambda: not _alive(b["server"]), 10, "host B's server to die")
        lock = hosts.shared / "db" / "server.lock"
        _backdate(lock, STALE + 1)  # as old as STALE s after host B's server died (nothing touches it now)
        late = hosts.run("host-a", "dbserver", "--path", hosts.db("host-a"), env=env)
        assert late.returncode == 0, late.stderr
        a2 = address(hosts.shared / "db")
        assert a2["host"] == "host-a" and hosts.servers() == [a2["server"]["pid"]], (a2, hosts.servers())

        stopped = hosts.run_in(a2["watchdog"]["pid"], "dbserver", "--stop", "--path", hosts.db("host-a"))
        assert stopped.returncode == 0, stopped.stderr
        assert hosts.servers() == []
        # A clean stop removes the heartbeat: B may start at once.
        assert liveness.read_heartbeat(DBDirectory(hosts.shared / "db")) is None


def test_a_start_that_must_first_stop_a_stopped_orphan_says_so_and_waits(server, tmp_path):
    """The watchdog was SIGKILLed and its server SIGSTOPped; a new `db dbserver` started a watchdog
    that sent the orphan SIGTERM, which a stopped process cannot act on, and waited 30 s for it:
    `db dbserver` said "no server answered within 30 s" and `--status` said "stopped" while the
    server came up seconds later.  Now the orphan gets SIGCONT with its SIGTERM, and while it is
    being stopped (here its exit is held 6 s by strace) the address file says so: `--status` names
    it, and `db dbserver` says what it waits for and waits, even past its own --timeout."""
    if shutil.which("strace") is None:
        skip_or_fail("strace is needed to hold the orphan's exit (apt-get install strace)")
    info = address(server)
    os.kill(info["watchdog"]["pid"], signal.SIGKILL)
    wait_for(lambda: not _alive(info["watchdog"]), 10, "the watchdog to die")
    orphan = info["server"]["pid"]
    holder = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(orphan), "-e", "trace=exit_group",
                               "-e", "inject=exit_group:delay_enter=6000000"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: holder.poll() is not None or "TracerPid:\t0\n" not in open(f"/proc/{orphan}/status").read(),
                 10, "strace to attach to the orphan")
        if holder.poll() is not None:
            skip_or_fail(f"strace cannot attach: {holder.stderr.read().strip()}")
        os.kill(orphan, signal.SIGSTOP)
        start = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "dbserver", "--path", str(server),
                                  "--timeout", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            said = wait_for(lambda: (lambda s: s[1].get("summary") if "stopping pid" in s[1].get("summary", "")
                                     else None)(_status(server)), 20, "--status to say the orphan is being stopped")
            out, err = start.communicate(timeout=60)
        finally:
            if start.poll() is None:
                start.kill()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
    assert f"stopping pid {orphan}, a server left by a killed watchdog" in said, said
    assert start.returncode == 0, err
    assert f"first stops pid {orphan}, a server left running by a killed watchdog" in err, err
    assert f"(it first stopped pid {orphan}, a server left running by a killed watchdog)" in out, out
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    # It acted on its SIGTERM (answering what it had queued), not killed after the stop deadline.
    assert f" {orphan} balsamdb.server.writer.server INFO stopping: " in _log(server, "server.log"), \
        _log(server)[-2000:]
    code, status, _proc = _status(server)
    assert code == 0 and status["summary"] == "running, supervised", status
