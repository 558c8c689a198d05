"""The tune study's storage URL: a database password in it is never printed.

    KAGGLECV_STORAGE=postgresql://user:pw@host/db make tune TRIALS=40   # out of `ps`, unlike STORAGE=

`masked_url` is how every message shows the URL (postgresql://user:***@host/db); `storage_errors`
turns a URL Optuna cannot open (not a URL, no driver, no database there) into one line.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator

from kagglecv.core.errors import UserError

STORAGE_ENV = "KAGGLECV_STORAGE"  # the URL from the environment: out of `ps`, unlike --storage


def masked_url(url: str) -> str:
    """`url` as it may be printed: postgresql://user:***@host/db (and ?password=*** in the query)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a URL that does not parse>"
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(?i)\b(password|passwd|pwd)=[^&]*", r"\1=***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query)) if netloc or query else url


@contextlib.contextmanager
def storage_errors(storage: str) -> Iterator[None]:
    """A storage URL Optuna cannot open (not a URL, no driver, no database there): one line that
    names it masked, never a traceback holding it."""
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        secret = urllib.parse.urlsplit(storage).password if "://" in storage else None
        why = first.replace(secret, "***") if secret else first
        raise UserError(
            f"cannot open the tune study's storage {masked_url(storage)!r}: {why[:200]}; give a database "
            f"URL Optuna takes (sqlite:///path.db, postgresql://user:password@host/db), best in "
            f"${STORAGE_ENV} so it stays out of `ps`"
        ) from None
