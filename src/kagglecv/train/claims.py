"""Folds claimed one at a time: several trainers of one run (processes, PARALLEL=folds siblings, or
machines sharing runs/) split its folds by themselves, and the last one to finish gathers.

A fold is claimed with an flock on runs/<comp>/<run>/fold<k>.lock for as long as it trains, so a
process that dies lets go of it and RESUME=1 anywhere picks it up from fold<k>.last.pt.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kagglecv.core import locks
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.runs import fold_done, gather, is_gathered
from kagglecv.ml import dist
from kagglecv.train.one_fold import RunContext, train_fold

SETUP_LOCK = ".setup.lock"


def _claim_name(fold: int) -> str:
    return f"fold{fold}.lock"


def claimed_elsewhere(run_dir: Path) -> bool:
    return any(locks.is_locked(p) for p in run_dir.glob("fold*.lock"))


def train_claimed(run: RunContext, fold_ids: list[int], what: str) -> tuple[list[int], list[int]]:
    """Train every planned fold that is neither finished nor claimed by another process (another
    `make train RUN=x` here or on a machine sharing runs/, or a PARALLEL=folds sibling). A fold is
    claimed with an flock on fold<k>.lock for as long as it trains: a process that dies lets go of
    it, and the next trainer of the run (RESUME=1 anywhere) picks it up from fold<k>.last.pt.
    Rank 0 claims for all ranks of a data-parallel group. Returns (trained here, held elsewhere)."""
    trained: list[int] = []
    busy: list[int] = []
    for fold in fold_ids:
        if dist.broadcast(fold_done(run.run_dir, fold) if dist.is_main() else None):
            console.print(f"fold {fold} already finished in {run.run_dir.name}")
            continue
        with contextlib.ExitStack() as claim:
            mine = (
                claim.enter_context(locks.claim(run.run_dir / _claim_name(fold), what))
                if dist.is_main()
                else None
            )
            if not dist.broadcast(mine):
                busy.append(fold)
                console.print(
                    f"fold {fold} is being trained by {locks.holder(run.run_dir / _claim_name(fold))}"
                )
                continue
            if dist.broadcast(fold_done(run.run_dir, fold) if dist.is_main() else None):
                continue  # finished by another process between the two looks
            train_fold(run, fold)
            trained.append(fold)
    return trained, busy


def gather_if_last(
    run: RunContext, fold_ids: list[int], trained: list[int], busy: list[int], seconds: float
) -> None:
    """The process that finds every planned fold finished gathers (under a lock, so two that finish
    together do not write summary.json at once); the others say who still trains what."""
    run_dir = run.run_dir
    with locks.waiting(run_dir / SETUP_LOCK):
        left = [k for k in fold_ids if not fold_done(run_dir, k)]
        if not left and not trained and is_gathered(run_dir):
            return  # a finished run trained again: its summary (and finished_at) stay as they are
        if not left:
            gather(run_dir, run.comp, seconds=seconds, device=run.device.type)
            return
    held = [k for k in left if locks.is_locked(run_dir / _claim_name(k))]
    if not trained and busy and held and not os.environ.get(dist.FOLD_WORKER):
        who = "; ".join(f"fold {k}: {locks.holder(run_dir / _claim_name(k))}" for k in held)
        raise UserError(
            f"run {run_dir.name} is already being trained ({who}); nothing is left for this process: "
            "wait for it, or start more trainers before its folds run out"
        )
    orphans = [k for k in left if k not in held]
    console.print(
        f"[yellow]run {run_dir.name} is not finished yet[/]: "
        + (f"folds {held} are being trained by other processes (the last to finish gathers)" if held else "")
        + ("; " if held and orphans else "")
        + (
            f"folds {orphans} stopped unfinished: `make train RUN={run_dir.name} RESUME=1` picks them up"
            if orphans
            else ""
        )
    )
