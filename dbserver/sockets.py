"""What the write server and the read service do alike with their ROUTER socket: CURVE on request,
and a TCP port (the one asked for, or any free one when it is taken or none was asked for)."""

import logging

import zmq

log = logging.getLogger(__name__)


def listen_tcp(socket, dbdir, host, port, encrypt):
    """Make ``socket`` a CURVE server with the DB directory's keys when ``encrypt`` (CURVE encrypts
    every connection; authentication stays with the HMAC of each request), bind it on ``host`` at
    ``port`` (0 or None: a free port; a taken port: another free one, logged) and return the port."""
    if encrypt:
        public, secret = dbdir.curve_keys()
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
    if port:
        try:
            socket.bind(f"tcp://{host}:{port}")
            return port
        except zmq.ZMQError as exc:
            log.warning("port %s is taken (%s); choosing another", port, exc)
    return socket.bind_to_random_port(f"tcp://{host}")
