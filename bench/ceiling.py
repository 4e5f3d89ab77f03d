"""The messaging ceiling: a server that checks each request like the write server and answers at once.

It decodes and verifies each request (HMAC, JSON), then answers with a
job-shaped result without touching any database, so the benchmark can tell
how much of the time is messaging and how much is the database.

    python -m balsamdb.bench.ceiling DB_PATH

It binds a free loopback port and writes DB_PATH's address file so that
unmodified balsamdb clients talk to it; it stops on SIGTERM.
"""

import os
import signal
import socket
import sys
import time
import uuid

import zmq

from balsamdb import address_file, protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.server.writer.setup import raise_priority


def main():
    dbdir = DBDirectory(sys.argv[1])
    secret = dbdir.secret()
    raise_priority()  # as the write server does, so the comparison is fair
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    epoch = uuid.uuid4().hex
    local = f"ipc://@balsamdb-{epoch}"  # the same transports as the write server
    sock.bind(local)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    me = address_file.process_identity(os.getpid())
    address_file.write_atomic(dbdir.address_file, {
        "state": "running", "db_type": dbdir.db_type, "protocol": address_file.PROTOCOL_VERSION,
        "host": socket.gethostname(), "address": f"tcp://127.0.0.1:{port}", "epoch": epoch,
        "local_address": local,
        "server": me, "watchdog": me, "started_at": time.time(), "ceiling": True,
    })
    print(port, flush=True)
    while not stopping:
        if not sock.poll(100):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            envelope, payload = frames[:-1], frames[-1:]
            message = protocol.decode(secret, payload)
            protocol.check_request(message, now=time.time())  # the same checks as the write server
            job = message["params"].get("job", {})
            answer = {"id": message["id"], "ok": True, "result": dict(job, state="CREATED", created_at=time.time())}
            sock.send_multipart(envelope + protocol.encode(secret, answer))
    address_file.write_atomic(dbdir.address_file, address_file.stopped_record(dbdir.db_type, "ceiling server stopped"))
    sock.close()
    ctx.term()


if __name__ == "__main__":
    main()
