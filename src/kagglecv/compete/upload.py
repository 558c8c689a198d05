"""Send a checked submission file to Kaggle and keep a record of every upload.

    kagglecv submit --upload --message "bigger images"    # make submit UPLOAD=1 MSG="bigger images"

The description Kaggle shows carries the run id and the CV score, so a leaderboard entry can be
traced back to runs/<comp>/<run>/. submissions/log.csv holds one row per upload, written BEFORE the
file is sent (status `pending`, with a token that is also in the description) and settled after
Kaggle answers. So a process killed between Kaggle taking the file and the row being settled leaves
a pending row, and the next upload looks for its token among Kaggle's latest submissions: found, the
row is marked done and the same file is not sent twice (a day has only a few submissions).
A file whose very bytes the competition already took (the log keeps each upload's sha256) is sent
again only when the user says so: asked on a terminal, refused elsewhere unless --again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from rich.markup import escape

from kagglecv.compete.records import SUBMISSIONS_DIR, earlier_uploads
from kagglecv.core.competition import Competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write, disk_error
from kagglecv.core.locks import hold
from kagglecv.prepare.sources.kaggle import competition_url, connect, http_status, with_retries

LOG = SUBMISSIONS_DIR / "log.csv"
LOG_COLUMNS = [
    "time",
    "competition",
    "file",
    "run",
    "cv_mean",
    "message",
    "response",
    "ref",
    "status",
    "token",
    "sha256",  # of the file sent: the same bytes sent again are asked about first
]
PENDING, DONE, NOT_SENT = "pending", "done", "not sent"  # a row's status
FAILED = "Could not submit to competition"  # what kaggle 2.x returns (instead of raising) when the PUT fails


def describe(comp: Competition, run: str, cv_mean: float, message: str | None, token: str = "") -> str:
    """The submission's description on Kaggle: the user's words, then run id, CV score and token."""
    tail = f"kagglecv run {run}, CV {comp.metric} {cv_mean:.4f}" + (f", {token}" if token else "")
    return f"{message.strip()} ({tail})" if message and message.strip() else tail


def pending_row(
    comp: Competition, slug: str, file: str, run: str, cv_mean: float, message: str | None, sha: str = ""
) -> dict:
    """submissions/log.csv's row for a submission about to be sent (a file upload, or a notebook
    version of a code competition): status pending, with a fresh token in its description, so a
    kill before Kaggle answers leaves a row the next attempt can look up."""
    token = f"kcv-{secrets.token_hex(4)}"
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "competition": slug,
        "file": file,
        "run": run,
        "cv_mean": f"{cv_mean:.6f}",
        "message": describe(comp, run, cv_mean, message, token),
        "response": "",
        "ref": 0,
        "status": PENDING,
        "token": token,
        "sha256": sha,
    }


# --- the log ---------------------------------------------------------------------------------------


def read_log() -> list[dict]:
    """Every row of submissions/log.csv (rows of older logs, without status and token, are done)."""
    if not LOG.exists():
        return []
    with LOG.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{c: row.get(c) or (DONE if c == "status" else "") for c in LOG_COLUMNS} for row in rows]


def _write_log(rows: list[dict], after: str) -> None:
    """The whole log, replaced atomically (a kill never leaves half a row); a disk that refuses says
    what that means for the upload."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    try:
        LOG.parent.mkdir(exist_ok=True)
        atomic_write(LOG, write)
    except OSError as e:
        raise _disk(e, LOG, after) from None


def _disk(e: OSError, path: Path, after: str) -> OSError | UserError:
    """A full or read-only disk in one line naming `path` (not a temporary name) and what it means
    for the upload; any other OSError as it was."""
    why = disk_error(OSError(e.errno, e.strerror, str(path)))
    return e if why is None else UserError(f"{why} ({after})")


@contextlib.contextmanager
def _one_upload_at_a_time() -> Iterator[None]:
    """Two uploads at once would each take the other's pending row for an interrupted one."""
    with contextlib.ExitStack() as stack:
        lock = LOG.with_name(".upload.lock")
        try:
            stack.enter_context(hold(lock, True, "kagglecv submit --upload", "another upload is running"))
        except OSError as e:
            raise _disk(e, lock, "nothing was uploaded") from None
        yield


def append_log(row: dict, after: str = "nothing was uploaded") -> None:
    _write_log([*read_log(), row], after)


def settle(token: str, after: str, **changes) -> dict:
    rows = read_log()
    row = next(r for r in rows if r["token"] == token)
    row.update({k: str(v) for k, v in changes.items()})
    _write_log(rows, after)
    return row


# --- what Kaggle holds -------------------------------------------------------------------------------


def _refs_with(api, slug: str, token: str) -> set[int]:
    """Refs of the competition's latest submissions (Kaggle lists newest first) whose description
    carries `token`."""
    with contextlib.redirect_stdout(io.StringIO()):
        listed = api.competition_submissions(slug, page_size=50) or []
    return {int(s.ref) for s in listed if s is not None and token in (s.description or "") and s.ref}


def _landed_quietly(api, slug: str, token: str) -> set[int] | None:
    """Refs with our token; None when even the listing fails (then nobody can tell)."""
    try:
        return _refs_with(api, slug, token)
    except Exception:  # noqa: BLE001 -- the server is failing; the caller reports its own error
        return None


def settle_pending(api, slug: str) -> list[dict]:
    """Rows of `slug` left pending by an upload that never heard back (killed, or the network gone):
    each becomes done (its token is on Kaggle) or not sent. Returns the rows found done."""
    pending = [r for r in read_log() if r["status"] == PENDING and r["competition"] == slug]
    found = []
    for row in pending:
        refs = with_retries(
            lambda token=row["token"]: _refs_with(api, slug, token),
            f"checking whether the interrupted upload of {row['file']} arrived",
            slug=slug,
            api=api,
        )
        if refs:
            found.append(
                settle(
                    row["token"],
                    f"Kaggle has it, ref {max(refs)}",
                    status=DONE,
                    ref=max(refs),
                    response="Submitted (found after an interrupted upload)",
                )
            )
        else:
            settle(row["token"], "it never arrived", status=NOT_SENT, response="never arrived (interrupted)")
    return found


# --- the upload ------------------------------------------------------------------------------------


def _send(api, slug: str, file: Path, description: str, token: str):
    """competition_submit with retries. A 5xx may come back although Kaggle kept the submission (the
    answer was lost, not the upload): before any retry, and after the last failure, we look for our
    token, so a retry never submits twice."""
    tries: dict = {"n": 0}

    def call():
        if tries["n"]:
            landed = _refs_with(api, slug, token)
            if landed:
                console.print("[yellow]Kaggle:[/] the last attempt did arrive; not submitting again")
                return SimpleNamespace(ref=max(landed), message="Submitted (the first answer was lost)")
        tries["n"] += 1
        # the client print()s upload errors even when quiet; its answer is what we report
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return api.competition_submit(str(file), description, slug, quiet=True)
        except Exception as e:
            tries["status"] = http_status(e)
            raise

    try:
        return with_retries(call, f"submitting to {slug}", slug=slug, api=api)
    except UserError as e:
        status = tries.get("status") or 0
        if 400 <= status < 500 and status != 429:  # refused (rules not accepted, ...): nothing arrived
            settle(token, "nothing was submitted", status=NOT_SENT, response=str(e)[:300])
            raise
        # the last attempt's answer may be the one lost: if Kaggle kept it, that is a success
        landed = _landed_quietly(api, slug, token)
        if landed:
            console.print("[yellow]Kaggle:[/] the last attempt did arrive, though its answer was an error")
            return SimpleNamespace(ref=max(landed), message="Submitted (the answer was lost)")
        if landed is None:  # cannot tell: the row stays pending for the next upload to look up
            raise UserError(
                f"{e} (whether it arrived is unknown: the next `make submit UPLOAD=1` checks "
                f"before sending again)"
            ) from None
        settle(token, "nothing was submitted", status=NOT_SENT, response=str(e)[:300])
        raise


def upload(
    comp: Competition,
    file: Path,
    run: str,
    cv_mean: float,
    message: str | None = None,
    *,
    again: bool = False,
) -> dict | None:
    """Upload `file` to the competition (the settled log row); None where the same bytes went there
    before and the user would not send them again (`again`: send anyway). Where Kaggle takes
    submissions only from notebooks nothing can be sent: an error that says how (`make kernel PUSH=1`)."""
    if comp.source_kind != "kaggle":
        raise UserError(
            f"{comp.slug} is not a Kaggle competition (source: {comp.source_kind}); {file} is written, "
            "there is nothing to upload it to"
        )
    slug = comp.source.get("competition", comp.slug)
    if not comp.submission.upload:
        how = (
            f"`make kernel PUSH=1 RUN={run}` runs it as a notebook on Kaggle, "
            f"then `make submit KERNEL=1 RUN={run}` submits it"
            if comp.submission.code_competition
            else f"submit it as the output of a notebook at {competition_url(slug)}/code"
        )
        raise UserError(
            f"{slug} takes submissions only from Kaggle notebooks: nothing was uploaded "
            f"({file} is written and checked); {how}"
        )
    api = connect()
    with _one_upload_at_a_time():
        for row in settle_pending(api, slug):
            if (row["file"], row["message"]) == (
                str(file),
                describe(comp, run, cv_mean, message, row["token"]),
            ):
                console.print(
                    f"[yellow]an earlier upload of {file} was interrupted after Kaggle took it "
                    f"(ref {row['ref']})[/]: not submitting it again; submissions/log.csv now says so"
                )
                return row
        sha = _sha256(file)
        earlier = sent_before(slug, file, sha)
        if earlier and not again and not _send_again(file, slug, earlier[-1]):
            console.print(f"not sent: {escape(str(file))} (submissions/log.csv lists the earlier upload)")
            return None
        return _upload_new(api, slug, file, describe_as=(comp, run, cv_mean, message), sha=sha)


# --- the same bytes again ----------------------------------------------------------------------------


def _sha256(file: Path) -> str:
    try:
        return hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read {file} ({e.strerror}): `make submit` writes it again") from None


def sent_before(slug: str, file: Path, sha: str) -> list[dict]:
    """Uploads of these very bytes that `slug` took, oldest first: log rows with this sha256, and, for
    rows logged before the log kept one, the uploads the file's own record lists."""
    rows = [r for r in read_log() if r["competition"] == slug and r["status"] == DONE and r["sha256"] == sha]
    seen = {str(r["ref"]) for r in rows}
    for u in earlier_uploads(file, sha):  # the record keeps them only while its sha256 matches
        ref = str(u.get("ref") or 0)
        if ref not in seen | {"0"} and u.get("status", DONE) == DONE and u.get("competition", slug) == slug:
            rows.append(u)
    return rows


def _send_again(file: Path, slug: str, last: dict) -> bool:
    """Ask on a terminal (no by default); elsewhere nobody can answer, so refuse in one line."""
    said = f"{file} is byte for byte what {slug} already took from you (ref {last.get('ref')}, {last.get('time')})"
    if not sys.stdin.isatty():
        raise UserError(
            f"{said}: nothing was sent. To send it again anyway: `make submit UPLOAD=1 AGAIN=1` "
            "(kagglecv submit --upload --again)"
        )
    console.print(f"[yellow]{escape(said)}[/]")
    try:
        answer = input("Send it again (it takes one of today's submissions)? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _upload_new(api, slug: str, file: Path, describe_as: tuple, sha: str = "") -> dict:
    """A pending row, the upload, the row settled."""
    comp, run, cv_mean, message = describe_as
    row = pending_row(comp, slug, str(file), run, cv_mean, message, sha)
    description, token = row["message"], row["token"]
    append_log(row)  # before sending: a kill from here on leaves a row the next upload looks up
    console.print(f"uploading {file} to {slug}: {description!r}")
    answer = _send(api, slug, file, description, token)
    ref = int(getattr(answer, "ref", 0) or 0)
    said = str(getattr(answer, "message", "") or "")
    accepted = ref != 0 and said != FAILED
    after = (
        f"Kaggle took it as ref {ref}; the row stays pending and the next upload finds it there"
        if accepted
        else "Kaggle did not accept it"
    )
    row = settle(token, after, status=DONE if accepted else NOT_SENT, ref=ref, response=said)
    if not accepted:
        raise UserError(
            f"Kaggle did not accept the upload of {file} ({said or 'no answer'}); nothing was submitted. "
            "Rerun `make submit UPLOAD=1` (the attempt is in submissions/log.csv)"
        )
    console.print(
        f"[green]✓[/] submitted to {slug} (ref {ref}): {said}. Score: {competition_url(slug)}/submissions"
    )
    return row
