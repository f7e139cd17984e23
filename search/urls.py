"""Where the studies live: the storage URL a command uses, and how it is shown.

Resolution order: ``--storage``, then ``$CREDITSWEEP_STORAGE``, then a SQLite file in the
current folder. A URL without a password takes it from the file named by
``$CREDITSWEEP_STORAGE_PASSWORD_FILE`` (a Docker secret), so the password is in no command line
and no environment. Passwords are masked by the URL's structure, never by searching a message
for the password's text (a one-letter password would otherwise mangle every word): the
user-info password, secret query parameters (``?password=``, libpq's and the drivers' other
spellings), and ``KEY=secret`` pairs; only $PGPASSWORD, which no URL names, is searched for.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, quote_plus

from catalogue.errors import UsageError

DEFAULT_STORAGE = "sqlite:///creditsweep.db"
STORAGE_ENV = "CREDITSWEEP_STORAGE"
PASSWORD_FILE_ENV = "CREDITSWEEP_STORAGE_PASSWORD_FILE"
STORAGE_HELP = (f"SQLAlchemy URL of the studies' database (default: ${STORAGE_ENV}, else "
                f"{DEFAULT_STORAGE}; the password may come from ${PASSWORD_FILE_ENV})")


def storage_url(flag: str | None) -> str:
    """The URL a command uses; an empty ``--storage ""`` is an error, not the default."""
    if flag is not None and not flag.strip():
        raise UsageError("--storage is empty: give a SQLAlchemy URL such as "
                         f"{DEFAULT_STORAGE}, or leave the flag out")
    url = flag or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    if not password_file:
        return url
    parsed = _parse(url)
    if parsed is None or parsed.password is not None or parsed.drivername.startswith("sqlite"):
        return url
    try:
        with open(password_file, encoding="utf-8") as fh:
            password = fh.read().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the storage password file ${PASSWORD_FILE_ENV} "
                         f"({password_file}): {exc.strerror}") from None
    return parsed.set(password=password).render_as_string(hide_password=False)


def _parse(url: str):
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        return None


_MASK = "***"  # what SQLAlchemy itself shows for a hidden password
_MIN_SEARCHED = 4  # shorter $PGPASSWORD values would match ordinary words of a message
# Query keys that carry a secret: libpq's password and sslpassword (psycopg passes the query
# to libpq), the MySQL drivers' passwd, ODBC's PWD (inside odbc_connect), libpq's variable.
_SECRET_KEYS = ("password", "passwd", "pwd", "sslpassword", "pgpassword")
# A secret as KEY=VALUE anywhere (a URL query, a libpq conninfo, an ODBC string); the value
# already masked, quoted, or up to the next separator.
_PAIR = re.compile(r"(?i)(?<![\w])(" + "|".join(_SECRET_KEYS) + r")(\s*=\s*)"
                   r"(\*\*\*|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;'\"]*)")
# The user-info of any URL in a text: scheme://user:PASSWORD@
_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s]*:)([^@\s/?]+)(@)")


def redact(url: str) -> str:
    """The URL with every credential masked (the user-info password, a ``?password=`` or
    other secret query parameter, a password inside a query value such as an ODBC string),
    for everything a user sees or a log keeps."""
    parsed = _parse(url)
    if parsed is None:
        return "<unparseable storage URL>"
    base = parsed.set(query={}).render_as_string(hide_password=True)
    pairs = [(key, _masked_value(key, value)) for key in sorted(parsed.query)
             for value in _values(parsed.query[key])]
    return base + ("?" + "&".join(f"{quote_plus(k)}={quote_plus(v, safe='*')}"
                                  for k, v in pairs) if pairs else "")


def _values(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _masked_value(key: str, value: str) -> str:
    return _MASK if key.lower() in _SECRET_KEYS else _mask_text(value)


def _secrets(parsed) -> list[tuple[str, str]]:
    """(query key, value) of each secret the URL carries in its query."""
    return [(key, value) for key in parsed.query if key.lower() in _SECRET_KEYS
            for value in _values(parsed.query[key]) if value]


def _has_secret(parsed) -> bool:
    return bool(parsed.password) or any(
        _masked_value(key, value) != value
        for key in parsed.query for value in _values(parsed.query[key]))


def _forms(secret: str) -> set[str]:
    """The ways a secret is written in a URL: as typed, and as SQLAlchemy, a browser or
    ``quote_plus`` would escape it."""
    return {secret, quote(secret, safe=" +"), quote(secret, safe=""), quote_plus(secret)}


def mask_password(text: str, url: str | None) -> str:
    """``text`` with every credential masked: each rendering of the URL and of its secrets
    (its ``user:password@`` part, its ``password=`` query parameters), any other
    ``KEY=secret`` pair or ``scheme://user:secret@`` in the text, and $PGPASSWORD's value.

    The URL's secrets are replaced only where the URL's structure puts them (after
    ``user:`` or ``password=``), so a short password never masks unrelated letters.
    """
    parsed = _parse(url or "")
    if parsed is not None and _has_secret(parsed):
        masked = redact(url or "")
        for rendering in {url or "", parsed.render_as_string(hide_password=False)}:
            text = text.replace(rendering, masked)
        text = _mask_userinfo(text, parsed)
        for key, value in _secrets(parsed):
            for form in _forms(value):
                text = re.sub(rf"(?i)(?<![\w])({re.escape(key)}\s*=\s*){re.escape(form)}",
                              rf"\g<1>{_MASK}", text)
    return _mask_environment(_mask_text(text))


def _mask_userinfo(text: str, parsed) -> str:
    if not parsed.password:
        return text
    users = _forms(str(parsed.username or ""))
    for password in _forms(str(parsed.password)):
        for user in users:
            text = text.replace(f"{user}:{password}@", f"{user}:{_MASK}@")
    return text


def _mask_text(text: str) -> str:
    """Secrets the text's own syntax marks: ``KEY=value`` pairs and URL user-info."""
    text = _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{_MASK}", text)
    return _USERINFO.sub(lambda m: f"{m.group(1)}{_MASK}{m.group(3)}", text)


def _mask_environment(text: str) -> str:
    """$PGPASSWORD's value wherever it stands as a whole token: libpq reads it from the
    environment, so no URL names it. This alone searches a message for a secret's text (no
    structure marks it); values under four characters are left, since they would match
    ordinary words."""
    secret = os.environ.get("PGPASSWORD") or ""
    if len(secret) < _MIN_SEARCHED:
        return text
    for form in sorted(_forms(secret), key=len, reverse=True):
        text = re.sub(rf"(?<![\w]){re.escape(form)}(?![\w])", _MASK, text)
    return text
