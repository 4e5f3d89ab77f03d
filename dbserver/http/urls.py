"""The URL paths of the HTTP store that are not projects or record labels."""

API_PATH = "_balsamdb"           # {base}_balsamdb/ is balsamdb's own endpoint, not a project
# Sub-paths of a project that are not record labels.
RESERVED_LABELS = ("last", "permissions")
RESERVED_PREFIXES = ("tag/", "tagged/")
