"""The session's finished run with its TTA choice already made (for test_export and test_infer, whose
subject is not the TTA choice): choosing it predicts every OOF image under each candidate view, which
every test's fresh copy of the run would otherwise do again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def run_with_tta_chosen(tmp_path_factory, finished_run_built, comp) -> tuple[Path, Path]:
    """(run folder relative to a project folder, a copy of the session's finished run whose
    tta_oof.json holds the choice `comp` gets). The cache is keyed by the folds' mtimes, which
    shutil.copytree keeps, so a further copy of this run reads the choice instead of making it."""
    from kagglecv.ml.engine import pick_device
    from kagglecv.predict.ensemble import load_fold_models
    from kagglecv.predict.tta import choose_tta

    built_root, rel = finished_run_built
    run_dir = shutil.copytree(built_root / rel, tmp_path_factory.mktemp("tta-chosen") / rel)
    old = os.getcwd()
    os.chdir(built_root)  # the competition's data/<slug>/ lies there (only read)
    try:
        choose_tta(comp, run_dir, load_fold_models(run_dir, [0, 1], pick_device("cpu")))
    finally:
        os.chdir(old)
    return rel, run_dir
