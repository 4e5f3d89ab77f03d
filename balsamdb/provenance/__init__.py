"""Provenance from inside the run: :func:`capture` (a Python main), :func:`run_command`
(a command: ``db run --record``), and the exports of records in W3C PROV-JSON and RO-Crate
(:mod:`.prov_json`, :mod:`.ro_crate`; those need the ``export`` extra).  See docs/provenance.md.

- :mod:`.capture`: the capture of one run (context manager, decorator)
- :mod:`.command`: a command run under capture
- :mod:`.facts`: platform, git state, executable, package versions
- :mod:`.files`: inputs, outputs found by a walk, data keys with SHA-256
- :mod:`.record_doc`: the Sumatra record document, its label rule, the cuts that bound its size
- :mod:`.selection`: the records of one record, job, workflow or project, for the exports
"""

from .capture import JOB_ENV, Capture, capture
from .command import RecordAround, run_command

__all__ = ["JOB_ENV", "Capture", "RecordAround", "capture", "run_command"]
