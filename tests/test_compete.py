"""The competitor's loop on real tiny runs of digits-demo: two runs -> blend -> submit the blend
(each member predicted once, through its own cache) -> the runs table lists all three."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers.cli import cli_text
from helpers.runs import FINISHED_RUN_ARGS
from kagglecv.cli import main


@pytest.mark.slow  # ~9 s
def test_blend_of_two_runs_submits_like_a_run_and_reuses_the_members_caches(finished_run, capsys):
    from kagglecv.core.competition import load_competition
    from kagglecv.core.config import load_config
    from kagglecv.train.run import train

    # a second real run beside the session's: another seed, and a fixed lr (no LR range test), trained
    # in-process (the CLI's train, and the report it ends with, are not what this test is about)
    cfg = load_config("configs/smoke.yaml", [*FINISHED_RUN_ARGS, "seed=7", "lr=0.002"])
    train(load_competition("digits-demo"), cfg)
    runs = sorted(p.name for p in finished_run.parent.iterdir() if (p / "summary.json").exists())
    assert len(runs) == 2
    for run in runs:  # each member predicted once here; the blend's submit must not predict again
        assert main(["submit", "-c", "digits-demo", "-r", run]) == 0
    capsys.readouterr()

    assert main(["blend", "-c", "digits-demo"]) == 0
    said = cli_text(capsys)
    blend_dir = next(p for p in finished_run.parent.iterdir() if p.name.startswith("blend-"))
    summary = json.loads((blend_dir / "summary.json").read_text())
    assert sorted(summary["members"]) == runs and abs(sum(summary["weights"]) - 1) < 1e-9
    assert f"honest CV accuracy {summary['cv_mean']:.4f}" in said

    assert main(["submit", "-c", "digits-demo", "-r", blend_dir.name]) == 0
    said = cli_text(capsys)
    assert said.count("read from its cache") == 2 and "predicting" not in said
    record = json.loads(
        (finished_run.parents[2] / "submissions" / f"digits-demo-{blend_dir.name}.json").read_text()
    )
    assert record["run"] == blend_dir.name and record["test_score"] is not None
    csv = pd.read_csv(record["file"])
    assert list(csv.columns) == ["ImageId", "Label"] and len(csv) == 360

    assert main(["runs", "-c", "digits-demo"]) == 0
    table = pd.read_csv(finished_run.parent / "runs.csv")
    assert set(table["run"]) == {*runs, blend_dir.name}
    assert table.set_index("run").loc[blend_dir.name, "test_score"] == record["test_score"]


def test_predict_and_export_through_the_cli(finished_run, capsys):
    """The CLI wiring of issue 13: `kagglecv predict` on a folder and a glob, `kagglecv export`."""
    import glob

    imgs = sorted(glob.glob("data/digits-demo/test/*.png"))[:3]
    assert main(["predict", "-c", "digits-demo", "-k", "2", imgs[0], "data/digits-demo/test/1*.png"]) == 0
    said = cli_text(capsys)
    out = sorted((finished_run.parents[2] / "predictions").glob("digits-demo-*.csv"))
    assert len(out) == 1 and "wrote" in said
    frame = pd.read_csv(out[0])
    assert {"image", "class", "prob", "class_2", "prob_2"} <= set(frame.columns)
    assert (frame["prob"] >= frame["prob_2"]).all() and len(frame) >= 2
    assert main(["predict", "-c", "digits-demo", "nope.png"]) == 2
    assert "nope.png does not exist" in cli_text(capsys)
    assert main(["export", "-c", "digits-demo"]) == 0
    folder = finished_run.parents[2] / "exports" / f"digits-demo-{finished_run.name}"
    assert {"model.json", "predict.py", "model.onnx"} <= {p.name for p in folder.iterdir()}
    assert main(["export", "-c", "digits-demo"]) == 2
    assert "exists already" in cli_text(capsys)
