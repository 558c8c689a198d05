"""plan.json: what a run trains and the split it trains on, written when the run starts.

    {"fold_ids": [0, 1, 2, 3, 4], "n_folds": 5, "folds_csv": "<sha256 of data/<comp>/folds.csv>"}

A run's folds must all come from one split: a resume (or another trainer of the same RUN=) after
`make data` split again (an n_folds edit, new images) would train the rest on other folds, put
images into oof.csv twice and report a CV that means nothing, so it refuses instead. `make runs`
judges a run complete against the n_folds it started with (core/runs.py reads it back).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kagglecv.core.competition import Competition
from kagglecv.core.config import TrainConfig
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import atomic_write
from kagglecv.core.runs import PLAN, read_plan
from kagglecv.prepare.layout import FOLDS


def folds_hash(comp: Competition) -> str:
    return hashlib.sha256((comp.data_dir / FOLDS).read_bytes()).hexdigest()


def planned_folds(run_dir: Path | None, fold_ids: list[int] | None) -> list[int] | None:
    """The fold ids to train: FOLDS=, else the ones the run was started with."""
    if fold_ids is None and run_dir is not None:
        return read_plan(run_dir).get("fold_ids")
    return fold_ids


def all_folds(cfg: TrainConfig, n_folds: int) -> list[int]:
    if cfg.train_folds > n_folds:
        console.print(
            f"[yellow]note:[/] train_folds={cfg.train_folds} but folds.csv has {n_folds}: training all {n_folds}"
        )
    return list(range(min(cfg.train_folds, n_folds)))


def check_split(run_dir: Path, comp: Competition) -> None:
    """Refuse to go on with a run whose folds.csv has changed since it started."""
    started_on = read_plan(run_dir).get("folds_csv")
    if started_on and started_on != folds_hash(comp):
        raise UserError(
            f"run {run_dir.name} was started on another split: {comp.data_dir / FOLDS} has changed since "
            "(`make data` split again, e.g. after an n_folds edit), and its folds cannot be continued on "
            "this one; start a new run (no RESUME=1, another RUN= name)"
        )


def write_plan(run_dir: Path, comp: Competition, fold_ids: list[int], n_folds: int) -> None:
    """plan.json with these fold ids; the split keeps what the run started on (checked before)."""
    old = read_plan(run_dir)
    plan = {
        "fold_ids": fold_ids,
        "n_folds": old.get("n_folds", n_folds),
        "folds_csv": old.get("folds_csv") or folds_hash(comp),
    }
    atomic_write(run_dir / PLAN, lambda p: p.write_text(json.dumps(plan)))
