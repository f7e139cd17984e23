"""Where the studies live: the storage URL a command uses, and how it is shown.

Resolution order: ``--storage``, then ``$CREDITSWEEP_STORAGE``, then a SQLite file in the
current folder. A URL without a password takes it from the file named by
``$CREDITSWEEP_STORAGE_PASSWORD_FILE`` (a Docker secret), so the password is in no command line
and no environment. Passwords are masked by the URL's structure, never by searching a message
for the password's text (a one-letter password would otherwise mangle every word).
"""

from __future__ import annotations

import os

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


def redact(url: str) -> str:
    """The URL with its password field masked, for everything a user sees or a log keeps."""
    parsed = _parse(url)
    return "<unparseable storage URL>" if parsed is None \
        else parsed.render_as_string(hide_password=True)


def mask_password(text: str, url: str | None) -> str:
    """``text`` with every rendering of the URL's credentials replaced by the masked form.

    Only structural pieces are replaced (the whole URL, and its ``user:password@host``
    part), so a short password never masks unrelated letters of the message.
    """
    parsed = _parse(url or "")
    if parsed is None or not parsed.password:
        return text
    plain = parsed.render_as_string(hide_password=False)
    text = text.replace(plain, parsed.render_as_string(hide_password=True))
    from urllib.parse import quote_plus

    for password in {str(parsed.password), quote_plus(str(parsed.password))}:
        for user in {str(parsed.username or ""), quote_plus(str(parsed.username or ""))}:
            text = text.replace(f"{user}:{password}@", f"{user}:***@")
    return text
