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
    names: frozenset = frozenset()     # of its parameters (a request may give these) ...
    required: frozenset = frozenset()  # ... and those without a default (it must give these)
    any_names: bool = False            # it takes **kwargs
    spool: bool = True  # a write that may wait in a spool; False: it needs an answer now (job_acquire)
    #: "job": its answer is a whole job (stored in a compact form, see balsamdb.answers); "value": any other
    answer: str = "value"
    #: ``params -> ids`` of the jobs a write changes or deletes (their fields are kept before, for the
    #: stored answers that refer to them: see balsamdb.answers), or None when it changes none
    changes_jobs: object = None
    #: ``(**params) -> None``: its checks that need no database, run before a write is spooled
    #: (nothing the server would refuse on sight waits in a spool); raises BadRequest
    offline: object = None

    @property
    def doc(self):
        return inspect.cleandoc(self.function.__doc__ or "")

    @property
    def spooled(self):
        """Whether a request of it may wait in a spool: a write not marked never-spooled."""
        return self.write and self.spool

    def check_offline(self, params):
        """The checks of this operation that need no database (see ``offline``)."""
        bind_params(self, params)
        if self.offline is not None:
            self.offline(**params)


OPERATIONS = {}


def operation(write, deferrable=False, server=False, spool=True, answer="value", changes_jobs=None, offline=None):
    """Register the function as an operation (the fields are those of :class:`Operation`).
    ``spool=False``: a write that is never spooled (a claim or a renewal means nothing late):
    with no server to answer, the caller gets an error at once."""
    if answer not in ("value", "job"):
        raise ValueError(f"answer is 'value' or 'job', not {answer!r}")
    def register(function):
        name = function.__name__
        signature = inspect.signature(function)
        signature = signature.replace(parameters=[p for p in signature.parameters.values() if p.name not in INJECTED])
        parameters = signature.parameters.values()
        OPERATIONS[name] = Operation(
            name, function, write, signature, deferrable, server,
            names=frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)),
            required=frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                               and p.default is p.empty),
            any_names=any(p.kind is p.VAR_KEYWORD for p in parameters), spool=spool,
            answer=answer, changes_jobs=changes_jobs, offline=offline)
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
    keys = params.keys()
    if op.required <= keys and (op.any_names or keys <= op.names):
        return  # what Signature.bind would accept, at a tenth of its cost (it runs for every request)
    try:
        op.signature.bind(**params)
    except TypeError as exc:
        raise BadRequest(f"{op.name}: {exc}") from None
