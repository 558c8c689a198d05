"""Where runs live and what marks them finished: runs/<comp>/<run-id>/ with config.yaml from the
start, fold<k>.pt + oof_fold<k>.csv per finished fold, and summary.json once folds are gathered.

No torch here, so `kagglecv report` and the CLI's checks start fast.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from pathlib import Path

from .errors import UserError
from .files import atomic_write

RUNS_DIR = Path("runs")
SUMMARY = "summary.json"


def run_name(model: str) -> str:
    """<time>-<model>: sorts by time, says what trained."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}"


def new_run_dir(slug: str, model: str) -> Path:
    name = run_name(model)
    run_dir = RUNS_DIR / slug / name
    i = 1
    while run_dir.exists():  # two runs in the same second
        i += 1
        run_dir = RUNS_DIR / slug / f"{name}-{i}"
    run_dir.mkdir(parents=True)
    return run_dir


def fold_done(run_dir: Path, fold: int) -> bool:
    return (run_dir / f"fold{fold}.pt").exists() and (run_dir / f"oof_fold{fold}.csv").exists()


def finished_folds(run_dir: Path) -> list[int]:
    ids = (p.stem[4:] for p in run_dir.glob("fold*.pt"))
    return sorted(int(k) for k in ids if k.isdigit() and fold_done(run_dir, int(k)))


def read_summary(run_dir: Path) -> dict:
    path = run_dir / SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise _unfinished(run_dir) from None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path} is unreadable ({e}); delete it, then `make train RESUME=1 RUN={run_dir.name}` gathers it "
            "again from the finished folds"
        ) from None


def _unfinished(run_dir: Path) -> UserError:
    return UserError(f"run {run_dir} did not finish (no {SUMMARY}); train again or pick another RUN=")


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write(run_dir / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=2)))


def has_progress(run_dir: Path) -> bool:
    """A finished fold or a fold under way: something that resuming would not redo."""
    return any(run_dir.glob("fold*.last.pt")) or bool(finished_folds(run_dir))


def latest_unfinished(slug: str) -> Path:
    """The run RESUME=1 continues: the latest unfinished one that trained something, else the latest."""
    base = RUNS_DIR / slug
    runs = (
        sorted(p for p in base.glob("*") if p.is_dir() and (p / "config.yaml").exists())
        if base.exists()
        else []
    )
    open_runs = [p for p in runs if list(p.glob("fold*.last.pt")) or not (p / SUMMARY).exists()]
    if not open_runs:
        what = f"every run in {base}/ finished" if runs else "there is no run yet"
        raise UserError(f"nothing to resume for {slug}: {what} (start one with `make train`)")
    begun = [p for p in open_runs if has_progress(p)]
    return (begun or open_runs)[-1]


def find_run(slug: str, run: str | None) -> Path:
    """The named run (an id under runs/<comp>/ or a folder's path), or the latest finished one."""
    base = RUNS_DIR / slug
    if run:
        run_dir = Path(run) if Path(run).is_dir() else base / run
        if not run_dir.is_dir():
            if "/" in run:
                raise UserError(f"no run folder {run}: the path does not exist")
            known = sorted(p.parent.name for p in base.glob("*/config.yaml")) if base.exists() else []
            close = difflib.get_close_matches(run, known, n=1, cutoff=0.8)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            listed = f"the latest {min(5, len(known))} of {len(known)}: " if len(known) > 5 else ""
            raise UserError(
                f"no run '{run}' for {slug}.{hint} Runs ({listed}see {base}/): {', '.join(known[-5:]) or 'none'}"
            )
        if not (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} is not a run folder (no config.yaml); runs live in {base}/<run-id>/")
        if not (run_dir / SUMMARY).exists():
            raise _unfinished(run_dir)
        return run_dir
    done = sorted(p.parent for p in base.glob(f"*/{SUMMARY}")) if base.exists() else []
    if not done:
        raise UserError(f"no finished training run for {slug} in {base}/: run `make train` first")
    return done[-1]
