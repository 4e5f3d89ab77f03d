"""The web pages of a real ``db serve`` timed over HTTP, for the benchmarks (``scripts/bench_web.py``,
``db bench --scale``): start it on a free loopback port, ask for pages with keep-alive, HTTP Basic
and the browser's ``Accept``, stop it.

    user = make_user(path)                  # an admin user of the project P (through the write server)
    serve = start_serve(path, port := free_port())
    try:
        p50, p90, size, first = Client(port).time("/P/", repeat=20)
    finally:
        stop_serve(serve)
"""

import base64
import html
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

USER, PASSWORD = "bench", "bench-pass"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
START_DEADLINE = 60.0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_user(path, project="P"):
    """The benchmark's user, an admin allowed into ``project``, saved through the write server."""
    import balsamdb
    from balsamdb.passwords import hash_password

    with balsamdb.connect(path) as db:
        db.call("user_save", name=USER, password_hash=hash_password(PASSWORD), admin=True)
        db.call("permission_grant", project=project, user=USER)


def start_serve(path, port):
    """``db serve`` on ``port``, in a session of its own, once it accepts connections."""
    serve = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "serve", "--path", str(path), "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return serve
        except OSError:
            if time.monotonic() > deadline or serve.poll() is not None:
                stop_serve(serve)
                raise RuntimeError(f"db serve did not start on port {port} within {START_DEADLINE:.0f} s")
            time.sleep(0.05)  # bench-ok: poll for the port with a deadline


def stop_serve(serve):
    if serve is None or serve.poll() is not None:
        return
    os.killpg(serve.pid, signal.SIGTERM)
    try:
        serve.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait(15)


class Client:
    """One keep-alive HTTP connection to ``db serve`` as the benchmark's user."""

    def __init__(self, port, timeout=120):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def get(self, path, accept=HTML):
        self.conn.request("GET", path, headers={"Authorization": self.auth, "Accept": accept})
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return body

    def time(self, path, repeat, accept=HTML):
        """(p50, p90, bytes, the first request's ms): the first also reads what the page keeps for a
        few seconds (the jobs page's charts)."""
        started = time.perf_counter()
        self.get(path, accept)
        first = (time.perf_counter() - started) * 1000
        self.get(path, accept)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            body = self.get(path, accept)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))], len(body), first

    def follow(self, path, links):
        """The address of the page reached from ``path`` by following its ``rel="next"`` link ``links`` times."""
        for _ in range(links):
            found = re.search(rb'rel="next" href="([^"]+)"', self.get(path))
            if not found:
                raise RuntimeError(f"{path} has no next link")
            path = path.split("?")[0] + html.unescape(found.group(1).decode())
        return path
