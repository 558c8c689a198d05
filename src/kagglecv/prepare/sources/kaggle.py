"""Kaggle competitions through the official `kaggle` client: credentials, download, safe unpacking.

    kagglecv data dogs-vs-cats     # -> data/dogs-vs-cats/raw/ (train/, test1/, sampleSubmission.csv)

The client does the HTTP; this module adds what it leaves to us: its import and auth side effects
kept off the screen, every API error turned into the one thing to do next, retries with backoff on
5xx and network errors, a download that is resumed (the client's `.kaggle-partial` marker) and
never taken as complete until the archive opens, and archives unpacked safely (archives.py: zip,
tar and 7z, nested ones too, no unsafe paths, free disk checked first).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.markup import escape

from kagglecv.core.competition import Competition
from kagglecv.core.console import console, with_size_bar
from kagglecv.core.errors import UserError
from kagglecv.prepare.sources.archives import DamagedArchive, extract_nested

T = TypeVar("T")

TOKEN_URL = "https://www.kaggle.com/settings"
RETRY_DELAYS: tuple[float, ...] = (2.0, 8.0, 30.0)  # seconds between attempts on 5xx / network errors

NO_CREDENTIALS = (
    "no Kaggle credentials found. Create an API token at "
    f"{TOKEN_URL} (API -> Create New Token) and save the downloaded kaggle.json as "
    "{json_path} ({why}chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)"
)
NEW_TOKEN = f"download a new token from {TOKEN_URL} (API -> Create New Token) and save it there (chmod 600)"


def competition_url(slug: str) -> str:
    return f"https://www.kaggle.com/competitions/{slug}"


# --- credentials ---------------------------------------------------------------------------


def _kaggle_api_class():
    """`import kaggle` authenticates at import time and prints a banner when it can't: silence it."""
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def _warn_if_readable(json_path: Path) -> None:
    try:
        mode = json_path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        shown = escape(str(json_path))
        console.print(
            f"[yellow]warning:[/] {shown} can be read by other users of this machine; run `chmod 600 {shown}`",
            soft_wrap=True,
        )


def _tilde(path: Path) -> str:
    """`path` as a person writes it: ~/.kaggle/kaggle.json rather than /home/me/.kaggle/kaggle.json."""
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def _warn_if_token_is_a_missing_file() -> None:
    """KAGGLE_API_TOKEN may name a file holding the token; the client sends a path it cannot find
    as the token itself, which then fails as a mysteriously bad token."""
    token = os.environ.get("KAGGLE_API_TOKEN", "")
    if "/" not in token or Path(token).exists():
        return
    # show the value only where it is plainly a path (a token must never be printed)
    shown = f" ({escape(token)})" if token.startswith(("/", "~", ".")) and len(token) < 300 else ""
    tilde = " The client does not expand ~: write $HOME instead." if token.startswith("~") else ""
    console.print(
        f"[yellow]warning:[/] KAGGLE_API_TOKEN looks like a file path{shown}, but no such file "
        f"exists, so the text itself is sent as the token.{tilde}",
        soft_wrap=True,
    )


def _expected_json(json_path: Path) -> tuple[str, str]:
    """Where to tell a person to save kaggle.json, and why there. The client reads
    $KAGGLE_CONFIG_DIR/kaggle.json, else ~/.kaggle/kaggle.json whenever ~/.kaggle/ exists (on Linux
    it falls back to ~/.config/kaggle/ only while ~/.kaggle/ is missing), so ~/.kaggle/kaggle.json
    always works."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return _tilde(json_path), "KAGGLE_CONFIG_DIR is set; "
    return _tilde(Path.home() / ".kaggle" / "kaggle.json"), ""


def _other_kaggle_jsons(json_path: Path) -> list[Path]:
    """kaggle.json files in the places the client might have read but did not, this time."""
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    places = [Path.home() / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]
    return [p for p in places if p != json_path and p.is_file()]


def _broken_kaggle_json(path: Path) -> UserError | None:
    """What is wrong with an existing kaggle.json, if anything (the client skips it silently)."""
    if not path.exists():
        return None
    shown = _tilde(path)
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        return UserError(f"{shown} cannot be read ({type(e).__name__}): make it yours with chmod 600")
    except UnicodeDecodeError:
        return UserError(f"{shown} is not valid JSON (not text at all): {NEW_TOKEN}")
    except json.JSONDecodeError as e:
        return UserError(f"{shown} is not valid JSON ({e.msg}, line {e.lineno}): {NEW_TOKEN}")
    if not isinstance(data, dict):
        return UserError(f"{shown} is not a kaggle.json (no 'username' and 'key'): {NEW_TOKEN}")
    for field in ("key", "username"):
        if not data.get(field):
            return UserError(f"{shown} has no '{field}': {NEW_TOKEN}")
    return None


def _no_credentials(json_path: Path) -> UserError:
    """Why the client found no credentials at all: a broken kaggle.json, one in the wrong place,
    or none."""
    broken = _broken_kaggle_json(json_path)
    if broken:
        return broken
    misplaced = _other_kaggle_jsons(json_path)
    if misplaced:
        why = (
            "KAGGLE_CONFIG_DIR is set"
            if os.environ.get("KAGGLE_CONFIG_DIR")
            else "it prefers ~/.kaggle/ whenever that folder exists"
        )
        return UserError(
            f"found {_tilde(misplaced[0])}, but the kaggle client reads {_tilde(json_path)} ({why}): "
            f"move the file there (chmod 600)"
        )
    where, why = _expected_json(json_path)
    return UserError(NO_CREDENTIALS.format(json_path=where, why=why))


def _credential_source(api) -> str:
    """Where the credentials in use came from, in words (never the key itself)."""
    method = str(api.config_values.get("auth_method", ""))
    if "ACCESS_TOKEN" in method:
        return "KAGGLE_API_TOKEN" if os.environ.get("KAGGLE_API_TOKEN") else "~/.kaggle/access_token"
    if "OAUTH" in method:
        return "~/.kaggle/credentials.json (kaggle auth login)"
    if os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    return str(api.config)


def connect():
    """An authenticated `KaggleApi`, or a UserError that says where to get a token and put it."""
    api = _kaggle_api_class()()
    # VERBOSE=1 makes the client print every request, Authorization header included
    api.args = [a for a in api.args if a != "--verbose"]
    json_path = Path(api.config)
    _warn_if_readable(json_path)
    _warn_if_token_is_a_missing_file()
    try:
        # the client prints its own help (and a permission warning) to stdout: ours replaces them
        with contextlib.redirect_stdout(io.StringIO()):
            with_retries(api.authenticate, "checking your Kaggle credentials", slug=None, api=api)
    except SystemExit:  # the client calls exit(1) when it finds no credentials at all
        # (it also ignores a kaggle.json it cannot parse, silently: say which it was)
        raise _no_credentials(json_path) from None
    except (TypeError, ValueError, AttributeError):
        # kagglesdk reads ~/.kaggle/kaggle.json once more on its own and trips over a broken one
        for path in (json_path, Path.home() / ".kaggle" / "kaggle.json"):
            broken = _broken_kaggle_json(path)
            if broken:
                raise broken from None
        raise
    return api


# --- errors and retries ----------------------------------------------------------------------


def http_status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _retriable(e: BaseException) -> bool:
    import requests

    if isinstance(e, requests.HTTPError):
        code = http_status(e)
        return code is not None and (code >= 500 or code == 429)
    return isinstance(
        e, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
    )


def _server_said(e: BaseException) -> str:
    """Kaggle's own error text (its JSON `message`), without requests' URL noise."""
    try:
        message = e.response.json().get("message", "")  # type: ignore[union-attr]
    except Exception:
        message = ""
    return f" Kaggle said: {message}" if message else ""


def explain(e: BaseException, action: str, slug: str | None, api=None) -> UserError:
    """An API exception -> the message that says what to do next."""
    import requests

    code = http_status(e)
    said = _server_said(e)
    if code == 401:
        where = f" (from {_credential_source(api)})" if api is not None else ""
        hint = ""
        if api is not None and "ACCESS_TOKEN" not in str(api.config_values.get("auth_method", "")):
            if os.environ.get("KAGGLE_API_TOKEN") or Path("~/.kaggle/access_token").expanduser().exists():
                hint = " An access token (KAGGLE_API_TOKEN or ~/.kaggle/access_token) is sent first: remove it if stale."
        return UserError(
            f"Kaggle rejected your credentials{where} while {action} (401). Create a new token at "
            f"{TOKEN_URL} (API -> Create New Token) and replace the old one.{hint}"
        )
    if code == 403 and slug:
        return UserError(
            f"Kaggle refused {action} (403): accept the competition's rules at "
            f"{competition_url(slug)}/rules with the account of your token (a closed competition "
            f"needs 'Late Submission' clicked first), then rerun.{said}"
        )
    if code == 404 and slug:
        return UserError(
            f"Kaggle has no competition '{slug}' (404 while {action}): check the slug in the "
            f"competition's address, {competition_url(slug)}"
        )
    if code == 429:
        return UserError(f"Kaggle is rate-limiting {action} (429): wait a few minutes and rerun.{said}")
    if code is not None and code >= 500:
        return UserError(
            f"Kaggle's servers failed {len(RETRY_DELAYS) + 1} times while {action} (HTTP {code}): "
            f"try again later.{said}"
        )
    if code is not None:
        return UserError(f"Kaggle answered HTTP {code} while {action}.{said}")
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return UserError(
            f"the download was cut off while {action}, {len(RETRY_DELAYS) + 1} times; the part "
            "received is kept and the next run resumes it: rerun the same command"
        )
    if isinstance(e, requests.ConnectionError | requests.Timeout):
        return UserError(
            f"could not reach Kaggle while {action}: check the internet connection (and any "
            "HTTPS_PROXY), then rerun"
        )
    return UserError(f"Kaggle client error while {action}: {e}")


def with_retries(
    call: Callable[[], T],
    action: str,
    *,
    slug: str | None,
    api=None,
    delays: tuple[float, ...] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Run `call`; on 5xx, 429 or network errors wait and try again (`delays`), then explain."""
    import requests

    delays = RETRY_DELAYS if delays is None else delays
    sleep = sleep or time.sleep
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except (requests.RequestException, ValueError) as e:
            # ValueError: the client's "Downloaded file size (x) does not match expected size"
            if isinstance(e, ValueError) and "size" not in str(e):
                raise
            retriable = isinstance(e, ValueError) or _retriable(e)
            if not retriable or attempt == len(delays):
                if isinstance(e, ValueError):
                    raise UserError(
                        f"the download of {slug} arrived incomplete ({e}); rerun to download it again"
                    ) from None
                raise explain(e, action, slug, api) from None
            wait = delays[attempt]
            console.print(
                f"[yellow]Kaggle:[/] {escape(action)} failed ({http_status(e) or type(e).__name__}); "
                f"retrying in {wait:.0f} s ({attempt + 1}/{len(delays)})"
            )
            sleep(wait)
    raise AssertionError("unreachable")


# --- download ----------------------------------------------------------------------------------


def download(api, slug: str, folder: Path, force: bool = False, **retry: Any) -> Path:
    """The competition's whole archive in `folder/<slug>.zip`; a partial one is resumed."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{slug}.zip"

    def call() -> None:
        # quiet: no tqdm bar and no prints (stdout is not redirected here: it runs in a thread,
        # and redirecting would also swallow our progress bar)
        api.competition_download_files(slug, path=str(folder), force=force, quiet=True)

    with_retries(
        lambda: with_size_bar(call, target, f"downloading {slug}"),
        f"downloading {slug}",
        slug=slug,
        api=api,
        **retry,
    )
    if not target.exists() or (folder / f"{slug}.zip.kaggle-partial").exists():
        raise UserError(f"the download of {slug} did not complete ({target}); rerun to resume it")
    return target


# --- the source ----------------------------------------------------------------------------------


def fetch(comp: Competition, raw_dir: Path) -> None:
    """Download the competition (resuming a partial download) and unpack it into `raw_dir`."""
    slug = comp.source.get("competition", comp.slug)
    api = connect()
    downloads = raw_dir.parent / "download"
    archive = download(api, slug, downloads)
    try:
        extract_nested(archive, raw_dir)
    except DamagedArchive:
        # complete in size but unreadable: fetch it once more from scratch
        console.print(f"[yellow]{escape(archive.name)} is damaged; downloading it again[/]")
        shutil.rmtree(raw_dir, ignore_errors=True)
        archive.unlink(missing_ok=True)
        archive = download(api, slug, downloads, force=True)
        try:
            extract_nested(archive, raw_dir)
        except DamagedArchive as e:
            archive.unlink(missing_ok=True)
            raise UserError(f"{e}, twice in a row; rerun to download it again") from None
    except UserError:
        shutil.rmtree(raw_dir, ignore_errors=True)  # e.g. unsafe paths: leave nothing half-unpacked
        raise
    archive.unlink()  # everything is in raw/ now; the zip would only double the disk used
    with contextlib.suppress(OSError):
        downloads.rmdir()
