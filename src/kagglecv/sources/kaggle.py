"""Kaggle competitions through the official `kaggle` client: credentials, download, safe unpacking.

    kagglecv data dogs-vs-cats     # -> data/dogs-vs-cats/raw/ (train/, test1/, sampleSubmission.csv)

The client does the HTTP; this module adds what it leaves to us: its import and auth side effects
kept off the screen, every API error turned into the one thing to do next, retries with backoff on
5xx and network errors, a download that is resumed (the client's `.kaggle-partial` marker) and
never taken as complete until the archive opens, and archives unpacked safely -- no absolute or
`..` paths, enough free disk checked first, nested zips (dogs-vs-cats ships train.zip inside its
zip) unpacked too.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from ..competition import Competition
from ..console import console, track
from ..errors import UserError

T = TypeVar("T")

TOKEN_URL = "https://www.kaggle.com/settings"
RETRY_DELAYS: tuple[float, ...] = (2.0, 8.0, 30.0)  # seconds between attempts on 5xx / network errors
SPACE_MARGIN = 1.1  # unpacking needs the archive's uncompressed size plus 10%

NO_CREDENTIALS = (
    "no Kaggle credentials found. Create an API token at "
    f"{TOKEN_URL} (API -> Create New Token) and save the downloaded kaggle.json as "
    "{json_path} (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)"
)


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
        console.print(
            f"[yellow]warning:[/] {json_path} can be read by other users of this machine; "
            f"run `chmod 600 {json_path}`",
            soft_wrap=True,
        )


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
    try:
        # the client prints its own help (and a permission warning) to stdout: ours replaces them
        with contextlib.redirect_stdout(io.StringIO()):
            with_retries(api.authenticate, "checking your Kaggle credentials", slug=None, api=api)
    except SystemExit:  # the client calls exit(1) when it finds no credentials at all
        raise UserError(NO_CREDENTIALS.format(json_path=json_path)) from None
    return api


# --- errors and retries ----------------------------------------------------------------------


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _retriable(e: BaseException) -> bool:
    import requests

    if isinstance(e, requests.HTTPError):
        code = _status(e)
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

    code = _status(e)
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
                f"[yellow]Kaggle:[/] {action} failed ({_status(e) or type(e).__name__}); "
                f"retrying in {wait:.0f} s ({attempt + 1}/{len(delays)})"
            )
            sleep(wait)
    raise AssertionError("unreachable")


# --- download ----------------------------------------------------------------------------------


def _download_progress() -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=bool(os.environ.get("KAGGLECV_NO_PROGRESS")),
    )


def _with_size_bar(call: Callable[[], Any], watch: Path, description: str) -> Any:
    """Run `call` in a thread and show how big `watch` has grown (the client's own bar is off)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    with _download_progress() as p:
        task = p.add_task(description, total=None)
        thread.start()
        while thread.is_alive():
            thread.join(0.25)
            with contextlib.suppress(OSError):
                p.update(task, completed=watch.stat().st_size)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def download(api, slug: str, folder: Path, force: bool = False, **retry: Any) -> Path:
    """The competition's whole archive in `folder/<slug>.zip`; a partial one is resumed."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{slug}.zip"

    def call() -> None:
        # quiet: no tqdm bar and no prints (stdout is not redirected here: it runs in a thread,
        # and redirecting would also swallow our progress bar)
        api.competition_download_files(slug, path=str(folder), force=force, quiet=True)

    with_retries(
        lambda: _with_size_bar(call, target, f"downloading {slug}"),
        f"downloading {slug}",
        slug=slug,
        api=api,
        **retry,
    )
    if not target.exists() or (folder / f"{slug}.zip.kaggle-partial").exists():
        raise UserError(f"the download of {slug} did not complete ({target}); rerun to resume it")
    return target


# --- safe extraction ---------------------------------------------------------------------------


def _member_path(name: str, archive: Path) -> PurePosixPath:
    """The member's relative path, or a UserError for absolute paths and `..` (zip slip)."""
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in path.parts:
        raise UserError(
            f"{archive.name} holds an unsafe path {name!r} (absolute or with '..'); refusing to "
            "unpack it. Nothing was extracted."
        )
    return path


def _check_space(archive: Path, members: list[zipfile.ZipInfo], dest: Path) -> None:
    need = sum(m.file_size for m in members) * SPACE_MARGIN
    probe = dest if dest.exists() else next(p for p in dest.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        raise UserError(
            f"unpacking {archive.name} needs {need / 1e9:.1f} GB but {probe} has {free / 1e9:.1f} GB "
            "free: free some space (or move data/ to a bigger disk) and rerun"
        )


def extract_zip(archive: Path, dest: Path) -> list[Path]:
    """Unpack `archive` into `dest` after checking every path and the free space first."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.filename.startswith("__MACOSX/")]  # macOS litter
            paths = [_member_path(m.filename, archive) for m in members]  # all checked before any write
            for m in members:
                if stat.S_ISLNK(m.external_attr >> 16):
                    raise UserError(
                        f"{archive.name} holds a symbolic link {m.filename!r}; refusing to unpack"
                    )
            _check_space(archive, members, dest)
            written = []
            for m, rel in track(list(zip(members, paths, strict=True)), f"unpacking {archive.name}"):
                target = dest.joinpath(*rel.parts)
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                written.append(target)
            return written
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DamagedArchive(f"{archive} is damaged ({e})") from None


class DamagedArchive(UserError):
    """The archive does not open or fails its checksums: a bad download, to be fetched again."""


def extract_nested(archive: Path, dest: Path) -> None:
    """Unpack `archive`, then every zip found inside it, in place (inner zips are removed once
    unpacked). An inner zip whose members share one top folder (train.zip -> train/...) unpacks
    beside itself; one with loose files unpacks into a folder named after it."""
    pending = [(archive, dest)]
    while pending:
        zip_path, into = pending.pop()
        for path in extract_zip(zip_path, into):
            if path.suffix.lower() == ".zip":
                pending.append((path, _inner_dest(path)))
        if zip_path != archive:
            zip_path.unlink()


def _inner_dest(inner: Path) -> Path:
    try:
        with zipfile.ZipFile(inner) as z:
            names = [n.replace("\\", "/") for n in z.namelist() if not n.startswith("__MACOSX/")]
            tops = {PurePosixPath(n).parts[0] for n in names if n.strip("/")}
    except zipfile.BadZipFile as e:
        raise DamagedArchive(f"{inner} is damaged ({e})") from None
    return inner.parent if len(tops) == 1 else inner.parent / inner.stem


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
        console.print(f"[yellow]{archive.name} is damaged; downloading it again[/]")
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
