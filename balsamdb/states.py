"""The Balsam-like job state machine.

A job moves forward through the pipeline
CREATED -> AWAITING_PARENTS -> READY -> STAGED_IN -> PREPROCESSED -> RUNNING
-> RUN_DONE -> POSTPROCESSED -> JOB_FINISHED, and may skip pre-run stages that a
job script does not use (a script that only says RUNNING, then RUN_DONE, then
JOB_FINISHED is legal).  RUNNING cannot be skipped.  A run that ends in
RUN_ERROR or RUN_TIMEOUT may be made RESTART_READY; any unfinished job may be
marked FAILED or USER_KILLED, and those may be made RESTART_READY again.
JOB_FINISHED is final.  Everything else is an illegal transition.
"""

from .exceptions import InvalidTransition

PIPELINE = (
    "CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED",
    "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED",
)
OTHER = ("RUN_ERROR", "RUN_TIMEOUT", "RESTART_READY", "FAILED", "USER_KILLED")
STATES = PIPELINE + OTHER
FINAL = frozenset({"JOB_FINISHED", "FAILED", "USER_KILLED"})
INITIAL = frozenset({"CREATED", "AWAITING_PARENTS", "READY"})

_PRE_RUN = ("CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED", "RUNNING")

TRANSITIONS = {state: set() for state in STATES}
for _i, _state in enumerate(_PRE_RUN[:-1]):
    TRANSITIONS[_state].update(_PRE_RUN[_i + 1:])
TRANSITIONS["RUNNING"].update({"RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT"})
TRANSITIONS["RUN_DONE"].update({"POSTPROCESSED", "JOB_FINISHED"})
TRANSITIONS["POSTPROCESSED"].add("JOB_FINISHED")
for _state in ("RUN_ERROR", "RUN_TIMEOUT", "FAILED", "USER_KILLED"):
    TRANSITIONS[_state].add("RESTART_READY")
TRANSITIONS["RESTART_READY"].update({"PREPROCESSED", "RUNNING"})
for _state in STATES:
    if _state not in FINAL:
        TRANSITIONS[_state].update({"FAILED", "USER_KILLED"})
TRANSITIONS = {state: frozenset(targets) for state, targets in TRANSITIONS.items()}


def check_state(state):
    """Return ``state`` if it is a known state name, else raise."""
    if not isinstance(state, str) or state not in TRANSITIONS:
        raise InvalidTransition(f"unknown state {state!r}; known states: {', '.join(STATES)}")
    return state


def check_transition(current, new):
    """Raise :class:`InvalidTransition` unless ``current -> new`` is allowed."""
    check_state(new)
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (final state)"
        raise InvalidTransition(f"a job in state {current} cannot move to {new}; allowed: {allowed}")
