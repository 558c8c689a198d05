"""What a build before the stage folders wrote still works: its run folder submits, blends, predicts
and exports, and its checkpoint meta and TTA plan load into today's typed contracts.

The files are in tests/fixtures/before-stages/ (see its README.md): a digits-small run trained and
submitted by commit 4121778, the last flat-package build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from helpers.cli import cli_text
from kagglecv.cli import main
from kagglecv.core.checkpoint import load_checkpoint
from kagglecv.core.run_files import TTAPlan

BEFORE = Path(__file__).parent / "fixtures" / "before-stages"


def _old_runs(root: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        run = root / "runs" / "digits-small" / name
        shutil.copytree(BEFORE / "old-run", run)
        out.append(run)
    return out


def test_the_old_checkpoint_meta_and_tta_plan_load_typed():
    _, meta = load_checkpoint(BEFORE / "old-run" / "fold0.pt")
    assert (meta.model, meta.img_size, meta.num_classes, meta.in_chans) == ("test_resnet", 16, 10, 3)
    assert meta.classes == [str(d) for d in range(10)] and meta.mean == [0.5] * 3 and meta.predict_size == 16
    assert meta.config["img_size"] == 16 and meta.extra == {}  # every key it wrote is one this build knows
    saved = json.loads((BEFORE / "old-run" / "tta_oof.json").read_text())
    plan = TTAPlan.from_json(saved)
    assert (plan.name, plan.flips, plan.scales, plan.metric) == ("none", [], [1.0], "accuracy")
    assert plan.to_json() == saved  # written back, it is the same file


def test_an_old_run_submits_blends_predicts_and_exports(digits_small, capsys):
    old, twin = _old_runs(digits_small, "old-run", "old-run-b")
    assert main(["submit", "-c", "digits-small", "-r", old.name]) == 0
    said = cli_text(capsys)
    assert "test accuracy" in said
    record = json.loads((digits_small / "submissions" / "digits-small-old-run.json").read_text())
    assert record["tta"]["name"] == "none" and "scores" in record["tta"]
    sub = pd.read_csv(digits_small / "submissions" / "digits-small-old-run.csv")
    assert list(sub.columns) == ["ImageId", "Label"] and len(sub) == 1597

    assert main(["blend", "-c", "digits-small", "--runs", old.name, twin.name]) == 0
    (blend,) = (digits_small / "runs" / "digits-small").glob("blend-*")
    assert main(["submit", "-c", "digits-small", "-r", blend.name]) == 0

    image = sorted((digits_small / "data" / "digits-small" / "test").iterdir())[0]
    assert main(["predict", "-c", "digits-small", "-r", old.name, str(image)]) == 0
    (answer,) = (digits_small / "predictions").glob("*.csv")
    assert pd.read_csv(answer)["class"].notna().all()

    assert main(["export", "-c", "digits-small", "-r", old.name]) == 0
    spec = json.loads((digits_small / "exports" / "digits-small-old-run" / "model.json").read_text())
    assert spec["model"] == "test_resnet" and spec["img_size"] == 16 and len(spec["weights"]) == 2
    assert "Traceback" not in cli_text(capsys)
