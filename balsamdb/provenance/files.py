"""The files of a run: declared inputs (paths or globs), the outputs found as files that
appeared or changed under the working directory, and their Sumatra data keys with digests.

A data key is Sumatra's ``{"path", "digest", "metadata", "creation"}``: ``digest`` is Sumatra's
own (SHA-1 of the content, what ``smt`` compares), and ``metadata`` holds ``size``,
``sha256`` and ``mimetype``.  Both digests come from one read of the file.  A file larger than
``max_digest_bytes`` is listed with its size and no digests (``metadata["digest_skipped"]``).
"""

import glob
import hashlib
import mimetypes
import os
from datetime import datetime, timezone

#: Directories never walked for outputs (version control, caches).
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".smt", ".pytest_cache", ".venv", "node_modules"})
#: At most this many files are looked at when the working directory is walked.
MAX_WALK = 20000
CHUNK = 1 << 20
TIMESTAMP = "%Y-%m-%d %H:%M:%S%z"


def expand(patterns, root):
    """Existing files named by ``patterns`` (paths or globs, relative to ``root``), in order, once each."""
    out = []
    for pattern in patterns or ():
        pattern = os.path.expanduser(str(pattern))
        full = pattern if os.path.isabs(pattern) else os.path.join(root, pattern)
        matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(pattern) else [full]
        for path in matches:
            path = os.path.abspath(path)
            if os.path.isfile(path) and path not in out:
                out.append(path)
    return out


def digests(path, max_bytes=None):
    """``(sha256, sha1, size)`` of file ``path``; the digests are None when it is larger than
    ``max_bytes``."""
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        return None, None, size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            if not block:
                break
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest(), size


def data_key(path, root, max_bytes=None):
    """The Sumatra data key of file ``path`` (named relative to ``root`` when inside it)."""
    sha256, sha1, size = digests(path, max_bytes)
    relative = os.path.relpath(path, root)
    shown = path if relative.startswith("..") else relative
    metadata = {"size": size, "mimetype": mimetypes.guess_type(path)[0]}
    if sha256 is None:
        metadata["digest_skipped"] = f"larger than {max_bytes} bytes"
    else:
        metadata["sha256"] = sha256
    created = datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc).astimezone()
    # Sumatra's IGNORE_DIGEST for a file that was not read
    return {"path": shown, "digest": sha1 or "IGNORE", "metadata": metadata, "creation": created.strftime(TIMESTAMP)}


class Snapshot:
    """The files under ``root`` with their (size, mtime): taken before a run, compared after it
    (:meth:`changed`).  The walk stops after :data:`MAX_WALK` files (``truncated``).  ``skip``:
    directories not walked (the DB directory when it lies inside ``root``: its own files change
    with every write)."""

    def __init__(self, root, limit=MAX_WALK, skip=()):
        self.root = root
        self.limit = limit
        self.skip = {os.path.realpath(d) for d in skip if d}
        self.truncated = False
        self.files = self._walk()

    def _walk(self):
        found = {}
        for directory, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS
                       and (not self.skip or os.path.realpath(os.path.join(directory, d)) not in self.skip)]
            for name in names:
                path = os.path.join(directory, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                found[path] = (st.st_size, st.st_mtime_ns)
                if len(found) >= self.limit:
                    self.truncated = True
                    return found
        return found

    def changed(self):
        """The files that appeared or changed since the snapshot, in path order."""
        after = Snapshot(self.root, self.limit, self.skip)
        self.truncated = self.truncated or after.truncated
        return sorted(path for path, state in after.files.items() if self.files.get(path) != state)
