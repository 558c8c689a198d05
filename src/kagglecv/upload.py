"""Send a checked submission file to Kaggle and keep a record of every upload.

    kagglecv submit --upload --message "bigger images"    # make submit UPLOAD=1 MSG="bigger images"

The description Kaggle shows carries the run id and the CV score, so a leaderboard entry can be
traced back to runs/<comp>/<run>/. Each answer from the server is appended to submissions/log.csv.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from pathlib import Path
from types import SimpleNamespace

from .competition import Competition
from .console import console
from .errors import UserError
from .sources.kaggle import competition_url, connect, with_retries

LOG = Path("submissions") / "log.csv"
LOG_COLUMNS = ["time", "competition", "file", "run", "cv_mean", "message", "response", "ref"]
FAILED = "Could not submit to competition"  # what kaggle 2.x returns (instead of raising) when the PUT fails


def describe(comp: Competition, run: str, cv_mean: float, message: str | None) -> str:
    """The submission's description on Kaggle: the user's words, then run id and CV score."""
    tail = f"kagglecv run {run}, CV {comp.metric} {cv_mean:.4f}"
    return f"{message.strip()} ({tail})" if message and message.strip() else tail


def _refs_described(api, slug: str, description: str) -> set[int]:
    """Refs of the competition's latest submissions (Kaggle lists newest first) with this description."""
    with contextlib.redirect_stdout(io.StringIO()):
        listed = api.competition_submissions(slug, page_size=50) or []
    return {int(s.ref) for s in listed if s is not None and s.description == description and s.ref}


def _landed_quietly(api, slug: str, description: str, before: set[int]) -> set[int]:
    """New refs with our description; an empty set when even the listing fails."""
    try:
        return _refs_described(api, slug, description) - before
    except Exception:  # noqa: BLE001 -- the server is failing; the caller reports its own error
        return set()


def append_log(row: dict) -> None:
    new = not LOG.exists()
    LOG.parent.mkdir(exist_ok=True)
    with LOG.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def upload(
    comp: Competition, file: Path, run: str, cv_mean: float, message: str | None = None
) -> dict | None:
    """Upload `file` to the competition; None where Kaggle only takes notebook submissions."""
    if comp.source_kind != "kaggle":
        raise UserError(
            f"{comp.slug} is not a Kaggle competition (source: {comp.source_kind}); {file} is written, "
            "there is nothing to upload it to"
        )
    slug = comp.source.get("competition", comp.slug)
    if not comp.submission.upload:
        console.print(
            f"[yellow]{slug} takes submissions only from Kaggle notebooks[/]: {file} is written and checked; "
            f"submit it as the output of a notebook at {competition_url(slug)}/code"
        )
        return None
    api = connect()
    description = describe(comp, run, cv_mean, message)
    console.print(f"uploading {file} to {slug}: {description!r}")

    # A 5xx may come back although Kaggle kept the submission (the answer was lost, not the upload).
    # Before any retry we look for a new submission with our description, so a retry never submits
    # twice and spends a second of the day's few submissions.
    tries: dict = {"n": 0, "before": None}

    def call():
        if tries["before"] is None:
            tries["before"] = _refs_described(api, slug, description)
        if tries["n"]:
            landed = _refs_described(api, slug, description) - tries["before"]
            if landed:
                console.print("[yellow]Kaggle:[/] the last attempt did arrive; not submitting again")
                return SimpleNamespace(ref=max(landed), message="Submitted (the first answer was lost)")
        tries["n"] += 1
        # the client print()s upload errors even when quiet; its answer is what we report
        with contextlib.redirect_stdout(io.StringIO()):
            return api.competition_submit(str(file), description, slug, quiet=True)

    try:
        answer = with_retries(call, f"submitting to {slug}", slug=slug, api=api)
    except UserError:
        # the last attempt's answer may be the one lost: if Kaggle kept it, that is a success
        landed = tries["before"] is not None and _landed_quietly(api, slug, description, tries["before"])
        if not landed:
            raise
        console.print("[yellow]Kaggle:[/] the last attempt did arrive, though its answer was an error")
        answer = SimpleNamespace(ref=max(landed), message="Submitted (the answer was lost)")
    ref = int(getattr(answer, "ref", 0) or 0)
    said = str(getattr(answer, "message", "") or "")
    row = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "competition": slug,
        "file": str(file),
        "run": run,
        "cv_mean": f"{cv_mean:.6f}",
        "message": description,
        "response": said,
        "ref": ref,
    }
    append_log(row)
    if ref == 0 or said == FAILED:
        raise UserError(
            f"Kaggle did not accept the upload of {file} ({said or 'no answer'}); nothing was submitted. "
            "Rerun `make submit UPLOAD=1` (the attempt is in submissions/log.csv)"
        )
    console.print(
        f"[green]✓[/] submitted to {slug} (ref {ref}): {said}. Score: {competition_url(slug)}/submissions"
    )
    return row
