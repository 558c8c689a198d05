"""One tiny trained digits-demo run per test session, shared by test_infer and test_export (both
only read it: each test works on its own copy of runs/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_TRAINED: dict[str, Path] = {}


def tiny_run(tmp_path_factory, digits_prepared) -> Path:
    """runs/digits-demo/<run> under a session folder: 2 folds x 1 epoch of test_resnet at 32 px."""
    if "root" not in _TRAINED:
        root = tmp_path_factory.mktemp("tiny-run")
        shutil.copytree(digits_prepared.parent / "competitions", root / "competitions")
        shutil.copytree(Path(__file__).resolve().parent.parent / "configs", root / "configs")
        shutil.copytree(digits_prepared, root / "data")
        old = os.getcwd()
        os.chdir(root)
        try:
            from kagglecv.competition import load_competition
            from kagglecv.config import load_config
            from kagglecv.train import train

            cfg = load_config("configs/smoke.yaml", ["lr=0.002", "batch_size=64"])
            train(load_competition("digits-demo"), cfg)
        finally:
            os.chdir(old)
        _TRAINED["root"] = root
    return _TRAINED["root"]


def copy_run(root: Path, workdir: Path) -> Path:
    """The trained run copied into a test's working folder; returns its path there."""
    shutil.copytree(root / "runs", workdir / "runs")
    (run_dir,) = (workdir / "runs" / "digits-demo").iterdir()
    return run_dir
