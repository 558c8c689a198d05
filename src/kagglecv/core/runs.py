"""Where runs live and what marks them finished: runs/<comp>/<run-id>/ with config.yaml from the
start, fold<k>.pt + oof_fold<k>.csv per finished fold, and summary.json once folds are gathered.
Which run a command means when none is named: the latest finished (by summary.json's finished_at)
or, for RESUME, the unfinished one that wrote something last; never by name. A named run is an id
under runs/<comp>/ that follows core/names.py's rule, never a path; a folder whose name breaks the
rule is skipped with a line, never picked.

Checkpoints (fold<k>.pt: weights + the JSON needed to rebuild the model) and `gather` (oof.csv +
summary.json from the finished folds) live here too, beside the rules that say what is finished.
torch is imported only inside the checkpoint functions, so `kagglecv report` and the CLI's checks
start fast.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.markup import escape

from kagglecv.core.checkpoint import load_checkpoint
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.locks import LOCK_NAME, is_locked, waiting
from kagglecv.core.names import NAME_RULE, check_name, is_plain_name
from kagglecv.core.run_files import is_blend

RUNS_DIR = Path("runs")
SUMMARY = "summary.json"
PLAN = "plan.json"


def run_name(model: str) -> str:
    """<time>-<model>: sorts by time, says what trained (short enough for the name rule)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)[:60]}"


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
    return UserError(
        f"run {run_dir} did not finish (no {SUMMARY}): `make train RESUME=1 RUN={run_dir.name}` continues it, "
        "or pick another RUN="
    )


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write(run_dir / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=2)))


def has_progress(run_dir: Path) -> bool:
    """A finished fold or a fold under way: something that resuming would not redo."""
    return any(run_dir.glob("fold*.last.pt")) or bool(finished_folds(run_dir))


def read_plan(run_dir: Path) -> dict:
    """plan.json, written when the run started: its fold ids, and the split they come from (n_folds,
    a hash of folds.csv; absent in runs from before they were recorded). {} when missing or damaged."""
    try:
        plan = json.loads((run_dir / PLAN).read_text())
    except (OSError, ValueError):
        return {}
    return plan if isinstance(plan, dict) else {}


def n_folds_of(run_dir: Path) -> int | None:
    """How many folds the split this run started on had: a run is complete against its own split,
    not against the competition's n_folds of today."""
    n = read_plan(run_dir).get("n_folds")
    return n if isinstance(n, int) and n > 0 else None


def is_gathered(run_dir: Path) -> bool:
    """summary.json lists every finished fold and no fold is under way: nothing left to gather."""
    try:
        listed = json.loads((run_dir / SUMMARY).read_text()).get("fold_ids")
    except (OSError, ValueError, AttributeError):
        return False
    return listed == finished_folds(run_dir) and not any(run_dir.glob("fold*.last.pt"))


def is_finished(run_dir: Path) -> bool:
    """The one meaning of a finished run (`make runs`, RESUME=1, the default run): summary.json is
    there, no fold is under way, and it lists every fold the run was asked for (plan.json's fold ids:
    train_folds=2 of 5 is finished with 2/5 folds). Runs from before plan.json: summary.json decides."""
    if not (run_dir / SUMMARY).exists() or any(run_dir.glob("fold*.last.pt")):
        return False
    planned = read_plan(run_dir).get("fold_ids")
    if not isinstance(planned, list):
        return True
    try:
        listed = json.loads((run_dir / SUMMARY).read_text()).get("fold_ids")
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: the command that reads it says so
    return not isinstance(listed, list) or set(planned) <= set(listed)


def finished_at(run_dir: Path) -> float:
    """When the run was last gathered: summary.json's finished_at, or (runs from before it was
    recorded) the file's modification time."""
    path = run_dir / SUMMARY
    try:
        return float(json.loads(path.read_text())["finished_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.stat().st_mtime if path.exists() else 0.0


def last_activity(run_dir: Path) -> float:
    """When the run last wrote something (an epoch's metrics, a resume file, a finished fold)."""
    names = ("config.yaml", "metrics.csv", SUMMARY, "fold*.pt", "fold*.last.pt")
    times = [p.stat().st_mtime for name in names for p in run_dir.glob(name)]
    return max(times, default=0.0)


def _clock(t: float) -> str:
    same_day = time.strftime("%Y%m%d", time.localtime(t)) == time.strftime("%Y%m%d")
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(t))


def run_folders(base: Path, *markers: str, say: bool = True) -> list[Path]:
    """The folders in runs/<comp>/ that hold one of `markers` (config.yaml: a run; summary.json: a
    finished one) and whose names follow the name rule. A folder that breaks it (planted in a shared
    runs/, a name with quotes or spaces) is skipped with a line, never picked: names become paths and code."""
    found = sorted({p.parent for m in markers for p in base.glob(f"*/{m}")}) if base.is_dir() else []
    for p in found:
        if say and not is_plain_name(p.name):
            console.print(
                f"[yellow]skipped[/] {escape(repr(str(p)))}: its name is no run id ({NAME_RULE}); "
                "rename or remove the folder"
            )
    return [p for p in found if is_plain_name(p.name)]


def run_time(run_dir: Path) -> float:
    """When a run finished (summary.json), else when it started (config.yaml): "latest" means this."""
    start = run_dir / "config.yaml"
    return finished_at(run_dir) or (start.stat().st_mtime if start.exists() else 0.0)


def latest_unfinished(slug: str) -> Path:
    """The run RESUME=1 continues: of the unfinished runs, the one that wrote something last (one that
    trained something before one that did not)."""
    base = RUNS_DIR / slug
    runs = run_folders(base, "config.yaml")
    open_runs = [p for p in runs if not is_blend(p) and not is_finished(p)]
    if not open_runs:
        what = f"every run in {base}/ finished" if runs else "there is no run yet"
        raise UserError(f"nothing to resume for {slug}: {what} (start one with `make train`)")
    begun = [p for p in open_runs if has_progress(p)]
    pick = max(begun or open_runs, key=lambda p: (last_activity(p), p.name))
    n = len(begun or open_runs)
    console.print(
        f"resuming run {pick.name} (last active {_clock(last_activity(pick))}, the latest of {n} unfinished "
        f"run{'s' * (n != 1)}; RUN= picks another)"
    )
    return pick


def _no_such_run(slug: str, run: str) -> UserError:
    base = RUNS_DIR / slug
    known = sorted(run_folders(base, "config.yaml", say=False), key=run_time, reverse=True)
    names = [p.name for p in known]
    close = difflib.get_close_matches(run, names, n=1, cutoff=0.8)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = f" (the latest 5 of {len(names)}, newest first)" if len(names) > 5 else ""
    return UserError(
        f"no run '{run}' for {slug}.{hint} Runs in {base}/{listed}: {', '.join(names[:5]) or 'none'}"
    )


def find_run(slug: str, run: str | None, *, blends: bool = True) -> Path:
    """The named run (an id under runs/<comp>/: never a path), or the latest finished one; with
    blends=False (export, predict, kernel: a blend has no models of its own) the latest training run."""
    base = RUNS_DIR / slug
    if run:
        run_dir = base / check_name(run, f"RUN (a run id in {base}/)")
        if not run_dir.is_dir():
            raise _no_such_run(slug, run)
        if not (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} is not a run folder (no config.yaml); runs live in {base}/<run-id>/")
        if not (run_dir / SUMMARY).exists():
            raise _unfinished(run_dir)
        return run_dir
    done = [p for p in run_folders(base, SUMMARY) if is_finished(p) and (blends or not is_blend(p))]
    if not done:
        raise UserError(f"no finished training run for {slug} in {base}/: run `make train` first")
    # by when it finished, not by name: RUN=exp1 must not win over a newer timestamped run
    pick = max(done, key=lambda p: (finished_at(p), p.name))
    n, what = len(done), "run" if blends else "training run"
    console.print(
        f"using run {pick.name} (finished {_clock(finished_at(pick))}, the latest of {n} finished "
        f"{what}{'s' * (n != 1)}; RUN= picks another)"
    )
    return pick


def run_at(path: Path) -> Path:
    """A run folder given by its path (`kagglecv report runs/<comp>/<run>`): only one of this
    project's runs/<comp>/<run-id>/, both names following the rule (never `../other/place`)."""
    real, base = Path(os.path.abspath(path)), Path(os.path.abspath(RUNS_DIR))
    if real.parent.parent != base:
        raise UserError(
            f"{path} is not a run folder of this project ({base}/<comp>/<run-id>/): give RUN=<run-id> [COMP=..]"
        )
    check_name(real.parent.name, "the competition of a run folder")
    check_name(real.name, "a run folder's name")
    return RUNS_DIR / real.parent.name / real.name


# ---- the summary gathered from the finished folds ---------------------------


def gather(run_dir: Path, comp, seconds: float | None = None, device: str | None = None) -> dict:
    """oof.csv + summary.json from the finished folds in a run folder (also folds trained elsewhere
    and copied in: FOLDS=0,1 on one machine, FOLDS=2,3,4 on another, then `make train RESUME=1 RUN=x`).
    Only train calls it: the run folder is train's to write."""
    from kagglecv.core.metrics import HIGHER_IS_BETTER, score

    done = finished_folds(run_dir)
    if not done:
        raise UserError(f"run {run_dir} has no finished fold yet; train it (RESUME=1 continues it)")
    metas = [load_checkpoint(run_dir / f"fold{k}.pt")[1] for k in done]
    classes = metas[0].classes
    oof = pd.concat([pd.read_csv(run_dir / f"oof_fold{k}.csv", index_col="row") for k in done]).sort_index()
    atomic_write(run_dir / "oof.csv", lambda p: oof.to_csv(p, index=False))
    y = oof["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    fold_scores = [float(m.score) for m in metas]
    old = read_summary(run_dir) if (run_dir / SUMMARY).exists() else {}
    summary = {
        **old,
        "competition": comp.slug,
        "run": run_dir.name,
        "model": metas[0].model,
        "folds": len(done),
        "fold_ids": done,
        "metric": comp.metric,
        "higher_is_better": HIGHER_IS_BETTER[comp.metric],
        "cv_mean": float(np.mean(fold_scores)),
        "cv_std": float(np.std(fold_scores)),
        "fold_scores": fold_scores,
        "oof_score": score(comp.metric, y, oof[[f"p_{c}" for c in classes]].to_numpy()),
        "best_epochs": [m.best_epoch for m in metas],
        "lr": metas[0].lr,
        "img_size": metas[0].img_size,
    }
    if seconds is not None:  # training time, summed over interrupted and resumed sessions
        summary["seconds"] = round(old.get("seconds", 0.0) + seconds, 1)
    if device is not None:  # the device the run really trained on (device=cpu on a GPU machine is cpu)
        summary["device"] = device
    summary["finished_at"] = time.time()  # which run is the latest goes by this, not by name
    summary.setdefault("seconds", 0.0)
    summary.setdefault("device", "?")
    write_summary(run_dir, summary)
    return summary


def check_run(run_dir: Path, summary: dict) -> list[int]:
    """The run's fold ids, once the run is settled: not being trained, every finished fold gathered."""
    name = run_dir.name
    if is_locked(run_dir / LOCK_NAME):
        raise UserError(f"run {name} is being trained right now; submit it once training has finished")
    listed = [int(k) for k in summary.get("fold_ids", range(summary.get("folds", 0)))]
    extra = sorted(set(finished_folds(run_dir)) - set(listed))
    if extra:
        raise UserError(
            f"run {name} has finished fold(s) {extra} that its summary.json does not list (trained elsewhere "
            f"and copied in?): gather them with `make train RUN={name} RESUME=1`, then submit"
        )
    return listed


# ---- metrics.csv ------------------------------------------------------------------------------


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return pd.read_csv(path).to_dict("records") if path.exists() else []


def write_rows(run_dir: Path, rows: list[dict], fold: int | None = None) -> None:
    """metrics.csv; with `fold`, only that fold's rows are this process's: the other folds' rows are
    read back from the file, since other processes may be training them right now."""
    with waiting(run_dir / ".metrics.lock"):
        if fold is not None:
            mine = [r for r in rows if r["fold"] == fold]
            rows = [r for r in read_rows(run_dir) if r["fold"] != fold] + mine
        columns = ["fold", "epoch", "lr", "train_loss", "val_loss", "metric", "img_size"]
        df = pd.DataFrame(rows, columns=columns)
        df = df.sort_values(["fold", "epoch"], kind="stable")
        atomic_write(run_dir / "metrics.csv", lambda p: df.to_csv(p, index=False))
