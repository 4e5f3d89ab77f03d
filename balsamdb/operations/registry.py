"""The registry of operations: each is a function registered with :func:`operation`,
whose docstring is its specification."""

import inspect
from dataclasses import dataclass

from ..exceptions import BadRequest

#: Keyword-only parameters that the caller of an operation supplies, never the request:
#: ``insert`` (how an insert-only operation inserts its rows, see :mod:`balsamdb.statements`)
#: and ``server`` (the write server, for the operations it answers itself).
INJECTED = ("insert", "server")


@dataclass(frozen=True)
class Operation:
    name: str
    function: object
    write: bool
    signature: inspect.Signature  # of the request's params (without the injected ones)
    deferrable: bool = False      # insert-only: takes ``insert``; its rows may be inserted with the batch's
    server: bool = False          # answered by the write server itself, outside any transaction

    @property
    def doc(self):
        return inspect.cleandoc(self.function.__doc__ or "")


OPERATIONS = {}


def operation(write, deferrable=False, server=False):
    def register(function):
        name = function.__name__
        signature = inspect.signature(function)
        signature = signature.replace(parameters=[p for p in signature.parameters.values() if p.name not in INJECTED])
        OPERATIONS[name] = Operation(name, function, write, signature, deferrable, server)
        return function

    return register


def lookup(name):
    """The :class:`Operation` called ``name``, or :class:`BadRequest`."""
    if not isinstance(name, str) or name not in OPERATIONS:
        raise BadRequest(f"unknown operation {name!r}; known: {', '.join(sorted(OPERATIONS))}")
    return OPERATIONS[name]


def bind_params(op, params):
    """Check ``params`` against the operation's signature; raise :class:`BadRequest`."""
    if not isinstance(params, dict):
        raise BadRequest(f"{op.name}: params must be an object")
    try:
        op.signature.bind(**params)
    except TypeError as exc:
        raise BadRequest(f"{op.name}: {exc}") from None
