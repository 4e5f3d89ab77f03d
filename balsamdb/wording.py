"""Numbers put into words for people, the same in the CLI, the web pages and the library's messages."""

import shlex


def shell_path(path):
    """``path`` as a shell word (``shlex.quote``): unchanged when plain, quoted when it holds a space,
    a quote or anything the shell reads, so that a command a message suggests can be pasted as shown
    (a trailing space included)."""
    return shlex.quote(str(path))


def plural(count, noun, nouns=None):
    """``"1 write"``, ``"2 writes"``: ``count`` with ``noun``, made plural (``nouns``, or
    ``noun + "s"``) when the count is not 1.  ``plural(n, "write waits", "writes wait")``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def duration(seconds):
    """``"0.4 s"``, ``"12 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``, ``"3 d 4 h"``: a span of time, to the
    precision a person reads (None: "")."""
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
