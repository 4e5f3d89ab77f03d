"""URLs of stores: the one redactor that hides passwords in messages and logs, and the
reading of PostgreSQL URLs (``postgresql://user:password@host:port/dbname``)."""

from urllib.parse import unquote, urlparse

from .exceptions import ConfigError


def redact(url):
    """The URL with everything between ``scheme://user:`` and the last ``@`` shown as ``***``
    (also when the password holds characters that confuse URL parsing), for messages and logs."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    credentials, _, host = rest.rpartition("@")
    name = credentials.split(":", 1)[0]
    if ":" not in credentials:
        return text
    if "/" in name or "?" in name or "#" in name:
        return f"{scheme}://***@{host}"
    return f"{scheme}://{name}:***@{host}"


def parse_postgres_url(url):
    """``postgresql://user:password@host:port/dbname`` -> psycopg2 keyword arguments
    (read by ``playhouse.db_url``; user, password and name %-decoded, port 5432 unless given,
    a query string ignored)."""
    # Imported here: playhouse.db_url loads every playhouse backend, a cost that job processes
    # importing balsamdb (SQLite or a server's address) should not pay.
    from playhouse import db_url

    form = "write postgresql://user:password@host:port/dbname"
    try:
        parts = urlparse(url.strip())
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError as exc:  # a port that is not a number, a broken IPv6 address
        raise ConfigError(f"{redact(url)} is not a PostgreSQL URL ({exc}); {form}") from None
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or not parts.path.strip("/"):
        raise ConfigError(f"{redact(url)} is not a PostgreSQL URL; {form}")
    params = db_url.parseresult_to_dict(parts._replace(query=""), unquote_password=True, unquote_user=True)
    params["database"] = unquote(parts.path.strip("/"))
    params.setdefault("port", 5432)
    return params


def check_postgres_url(url):
    """Connect once to the server of ``url``; raise :class:`ConfigError` saying what is wrong."""
    import psycopg2

    params = parse_postgres_url(url)
    try:
        psycopg2.connect(connect_timeout=5, **params).close()
    except psycopg2.OperationalError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        raise ConfigError(f"cannot connect to {redact(url)}: {reason}") from None
