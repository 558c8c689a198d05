"""Submission records: submissions/<comp>-<id>.json beside each CSV that `make submit` writes.

A record says where a submission came from and how it did: source run, folds, TTA, CV mean/std,
local test score, the rows filled with the class prior, and each upload's ref and message. submit
writes them; the report (and later a CV-vs-leaderboard ledger) only reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from kagglecv.core.files import atomic_write, disk_error
from kagglecv.core.runs import RUNS_DIR

SUBMISSIONS_DIR = Path("submissions")


def write_file(path: Path, write) -> None:
    """atomic_write, with a disk error naming the file the user knows, not the temporary one."""
    try:
        atomic_write(path, write)
    except OSError as e:
        if e.filename and e.filename != str(path) and disk_error(e):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def write_record(record: dict) -> None:
    path = Path(record["file"]).with_suffix(".json")
    write_file(path, lambda p: p.write_text(json.dumps(record, indent=2)))


def _submissions_dir(run_dir: Path) -> Path:
    """submissions/ beside the runs/ folder that holds run_dir (report may be given a folder's path)."""
    parts = run_dir.resolve().parents
    if len(parts) > 2 and parts[1].name == RUNS_DIR.name:
        return parts[2] / SUBMISSIONS_DIR.name
    return SUBMISSIONS_DIR


def latest_record(run_dir: Path, competition: str) -> dict | None:
    """The newest submission record written from this run, or None (never submitted)."""
    found = []
    for path in sorted(_submissions_dir(run_dir).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("run") == run_dir.name and rec.get("competition") == competition:
            found.append(rec)
    return max(found, key=lambda r: str(r.get("written_at", "")), default=None)


def earlier_uploads(csv: Path, sha: str) -> list:
    """Uploads recorded for this very file (same bytes) by an earlier `make submit`."""
    try:
        old = json.loads(csv.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return []
    return old.get("uploads", []) if isinstance(old, dict) and old.get("sha256") == sha else []
