"""The registry of operations: each is a function registered with :func:`operation`,
whose docstring is its specification."""

import inspect
from dataclasses import dataclass

from ..exceptions import BadRequest


@dataclass(frozen=True)
class Operation:
    name: str
    function: object
    write: bool
    signature: inspect.Signature

    @property
    def doc(self):
        return inspect.cleandoc(self.function.__doc__ or "")


OPERATIONS = {}


def operation(write):
    def register(function):
        name = function.__name__
        OPERATIONS[name] = Operation(name, function, write, inspect.signature(function))
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
