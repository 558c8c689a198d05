"""Starting several training processes from one `make train`: every check that can fail runs here,
once, before any process starts (a user error is one line, never N tracebacks).

    make train GPUS=4                   # relaunch: torchrun, data-parallel on each fold (ml/dist.py)
    make train GPUS=4 PARALLEL=folds    # parallel_folds: four trainers of one run, each claiming folds
"""

from __future__ import annotations

import os
from pathlib import Path

from kagglecv.core.errors import UserError


def relaunch(args, cfg, comp, fold_ids) -> None:
    """GPUS=N: every check that can fail runs here, once, before torchrun starts N processes."""
    from kagglecv.core.locks import LOCK_NAME, is_locked
    from kagglecv.core.runs import RUNS_DIR, latest_unfinished, run_name
    from kagglecv.ml.dist import relaunch_train
    from kagglecv.train.run import preflight

    if not args.run and "--nnodes" in os.environ.get("TORCHRUN", ""):
        raise UserError(
            "several machines need one run name: add RUN=<name> (the same on every machine), and keep "
            "runs/ and data/ on storage all machines share"
        )
    # one name for all ranks: the run to resume, or a new one
    run = args.run or (latest_unfinished(comp.slug).name if args.resume else run_name(cfg.model))
    run_dir = RUNS_DIR / comp.slug / run
    if args.resume:
        from kagglecv.core.config import config_from_dict, read_yaml

        if not (run_dir / "config.yaml").exists():
            raise UserError(f"no run '{run}' to resume in {RUNS_DIR / comp.slug}/")
        cfg = config_from_dict(read_yaml(run_dir / "config.yaml", "run config"))  # its own recipe and device
    if is_locked(run_dir / LOCK_NAME):
        raise UserError(
            f"run {run} is already being trained (see {run_dir / LOCK_NAME}); wait for it to finish"
        )
    preflight(comp, cfg, fold_ids, run_dir)
    relaunch_train(
        args.gpus,
        comp=comp.slug,
        config=args.config,
        run=run,
        folds=args.folds,
        resume=args.resume,
        overrides=args.overrides,
        cpu=cfg.device == "cpu",
    )


def parallel_folds(args, cfg, comp, fold_ids) -> Path | None:
    """GPUS=N PARALLEL=folds: N trainers of one named run, each claiming whole folds (run.py)."""
    from kagglecv.core.runs import RUNS_DIR, latest_unfinished, run_name
    from kagglecv.ml.dist import launch_fold_workers
    from kagglecv.train.run import preflight

    run = args.run or (latest_unfinished(comp.slug).name if args.resume else run_name(cfg.model))
    if args.resume:
        from kagglecv.core.config import config_from_dict, read_yaml

        cfg = config_from_dict(read_yaml(RUNS_DIR / comp.slug / run / "config.yaml", "run config"))
    preflight(comp, cfg, fold_ids, RUNS_DIR / comp.slug / run)
    argv = ["train", f"--comp={comp.slug}", f"--config={args.config}", f"--run-name={run}"]
    argv += [f"--folds={args.folds}"] * bool(args.folds) + ["--resume"] * args.resume + list(args.overrides)
    codes = launch_fold_workers(args.gpus, argv, cpu=cfg.device == "cpu")
    run_dir = RUNS_DIR / comp.slug / run
    if any(codes):
        raise UserError(
            f"fold workers exited with codes {codes}; `make train RUN={run} RESUME=1` continues the folds left"
        )
    return run_dir if (run_dir / "summary.json").exists() else None
