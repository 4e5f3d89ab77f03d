"""`db serve` as a process for tests: start it on a free port of 127.0.0.1, talk to it, stop it."""

import base64
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_DEADLINE = 30.0   # seconds for `db serve` to listen
STOP_DEADLINE = 15.0
PASSWORDS = {"ada": "ada-s3cret!", "bob": "bob's pass phrase"}
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}  # what a browser asks for
# `db serve` whether or not cli/main.py registers it yet.
SERVE_MAIN = ("import sys; from balsamdb.cli.main import main; from balsamdb.cli.serve import serve; "
              "main.add_command(serve); sys.argv[0] = 'db'; main()")


# -- the server --------------------------------------------------------------------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Served:
    """A `db serve` process: its base URL, DB directory and a small HTTP client."""

    def __init__(self, path, workdir, *options, port=None):
        self.path = Path(path)
        self.port = port or free_port()
        self.log = open(Path(workdir) / f"serve-{self.port}.out", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_MAIN, "serve", "--path", str(path), "--port", str(self.port), *options],
            stdout=self.log, stderr=subprocess.STDOUT, text=True)
        prefix = "/"
        if "--prefix" in options:
            prefix = "/" + options[options.index("--prefix") + 1].strip("/") + "/"
        self.prefix = prefix.replace("//", "/")
        self.base = f"http://127.0.0.1:{self.port}{self.prefix}"
        deadline = time.monotonic() + START_DEADLINE
        while not _listening(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"db serve exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"db serve did not listen on {self.port} within {START_DEADLINE} s: "
                                     f"{self.output()}")
            time.sleep(0.02)  # wait-ok: poll interval; the deadline is checked above

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"db serve ignored SIGTERM for {STOP_DEADLINE} s")
            assert self.proc.returncode == 0, f"db serve exited {self.proc.returncode}: {self.output()}"
        self.log.close()

    def url(self, user=None):
        if user is None:
            return self.base
        # Sumatra takes the password in the URL literally (no %-decoding): send it as it is.
        return f"http://{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}{self.prefix}"

    def request(self, method, path="", body=None, user=None, headers=None, timeout=60):
        """One request to ``{base}{path}`` (``path`` is sent as given: quote it yourself)."""
        headers = dict(headers or {})
        if user is not None:
            token = base64.b64encode(f"{user}:{PASSWORDS.get(user, 'wrong')}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path if path.startswith("http") else self.prefix + path, body=body,
                         headers=headers)
            response = conn.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            conn.close()


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.headers.get('Content-Type')} {self.text[:300]!r}>"
