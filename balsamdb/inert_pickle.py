"""Unpickle Sumatra's objects without running any of their code.

A pickle is a program: it may call any class it names with any arguments, and unpickling runs that
class's constructor or ``__setstate__``.  Several of Sumatra's classes do things when built (an
``Executable(path)`` runs ``"<path> --version"`` through the shell, a ``SimpleParameterSet(text)``
evaluates its values with ``eval``, stores and repositories create files or run git).  So no class a
pickle names is ever built here: :class:`InertUnpickler` hands the pickle an inert stand-in for each
(:class:`Inert`), which only records what the pickle gives it (the arguments, the state, the items);
plain types (:data:`PLAIN_GLOBALS`) are the only real ones made, and any other global is refused.

A stand-in that the pickle *called* (``Executable("...")``) is refused by :func:`refuse_calls`:
Sumatra pickles its objects by their state and never calls a class, so a call is a crafted store.
"""

import io
import pickle

# Real classes and functions a record's pickle may use: plain types only, whose construction
# does nothing but make the value.
PLAIN_GLOBALS = {("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")} | {
    ("builtins", n) for n in ("set", "frozenset", "object", "dict", "list", "tuple", "str", "int", "float",
                              "bool", "bytes", "bytearray", "complex")} | {
    ("collections", "OrderedDict"), ("_codecs", "encode")}

# Globals that a record's pickle names and that are replaced by inert stand-ins: Sumatra's classes,
# the ``parameters`` package's ParameterSet (inside NTParameterSet), and what a ConfigParser pickles
# besides its sections (its converters, its compiled patterns), which is not read.
INERT_MODULES = ("sumatra", "parameters", "configparser")
INERT_GLOBALS = {("functools", "partial"), ("re", "_compile"), ("builtins", "getattr")}

class Refused(Exception):
    """The store holds something that a record made by smt never holds."""


class Inert:
    """A stand-in for a class (or function) named by a pickle: it records and does nothing."""

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "_inert", {"args": args, "kwargs": kwargs, "called": False,
                                            "state": None, "items": {}, "list": []})
        return self

    def __init__(self, *args, **kwargs):  # only a call runs __init__; NEWOBJ runs __new__ alone
        self._inert["called"] = True

    def __setstate__(self, state):
        self._inert["state"] = state

    def __setitem__(self, key, value):
        self._inert["items"][key] = value

    def append(self, value):
        self._inert["list"].append(value)

    def extend(self, values):
        self._inert["list"].extend(values)

    def add(self, value):
        self._inert["list"].append(value)

    def __repr__(self):
        return f"<stand-in for {self.global_name}>"


def short(value):
    """``repr(value)``, cut to 60 characters (for an error message)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _inert_class(cls, how):
    if not (isinstance(cls, type) and issubclass(cls, Inert)):
        raise Refused(f"{how} of {short(cls)}, which a Sumatra record never holds")
    return cls


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocols 0 and 1) without its call of ``base.__init__``."""
    return _inert_class(cls, "copyreg._reconstructor").__new__(cls)


def _newobj(cls, *args):
    """``copyreg.__newobj__`` as a global: ``cls.__new__`` of a stand-in, as the NEWOBJ opcode does."""
    return _inert_class(cls, "copyreg.__newobj__").__new__(cls, *args)


class InertUnpickler(pickle.Unpickler):
    """Unpickles plain values as themselves and every other allowed global as an :class:`Inert`."""

    def __init__(self, file):
        super().__init__(file)
        self._stand_ins = {}

    def find_class(self, module, name):
        if (module, name) in PLAIN_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if (module, name) == ("copyreg", "__newobj__"):
            return _newobj
        if (module, name) in INERT_GLOBALS or module.split(".")[0] in INERT_MODULES:
            key = f"{module}.{name}"
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (Inert,), {"global_name": key, "__module__": __name__})
            return self._stand_ins[key]
        raise pickle.UnpicklingError(f"the store names {module}.{name}, which a Sumatra record never holds: "
                                     "refused (a crafted store?)")


def unpickle(data):
    """The value of one shelve entry, with inert stand-ins for Sumatra's objects; refused when any
    of Sumatra's classes was called (see :func:`refuse_calls`)."""
    value = InertUnpickler(io.BytesIO(data)).load()
    refuse_calls(value)
    return value


def refuse_calls(value):
    """Refuse a value in which the pickle called one of Sumatra's classes (or the ``parameters``
    package's): smt's pickles rebuild those from their state, so a call is a crafted store.  (The
    functions a ConfigParser's pickle calls stay inert stand-ins and are allowed.)"""
    seen, todo = set(), [value]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Inert):
            if item._inert["called"] and item.global_name.split(".")[0] in ("sumatra", "parameters"):
                raise Refused(f"the store holds an object made by calling {item.global_name}(...), which smt "
                              "never stores: refused (a crafted store?)")
            todo.extend([*item._inert["args"], *item._inert["kwargs"].values(), item._inert["state"],
                         *item._inert["items"].values(), *item._inert["list"]])
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
