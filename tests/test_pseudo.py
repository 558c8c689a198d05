"""Pseudo-labels: confident test predictions of an earlier run join every training split, never a
validation split; the run says so and `make runs` marks it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers.cli import cli_text
from helpers.runs import FINISHED_RUN_ARGS
from kagglecv.cli import main

SMOKE = ["--config", "configs/smoke.yaml", *FINISHED_RUN_ARGS]


def _confident_cache(run_dir, solution: pd.DataFrame, n_sure: int) -> None:
    """Make the first n_sure test images' cached predictions certain (and right), the rest unsure."""
    with np.load(run_dir / "test_probs.npz") as z:
        probs, meta = z["probs"].copy(), str(z["meta"])
    classes = json.loads(meta)["classes"]
    truth = solution["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs[:] = 1.0 / len(classes)
    probs[np.arange(n_sure), truth[:n_sure]] = 0.99
    np.savez(run_dir / "test_probs.npz", probs=probs, meta=np.array(meta))


@pytest.mark.slow  # ~8 s
def test_pseudo_labels_join_training_splits_only(finished_run, capsys):
    assert main(["submit", "-c", "digits-demo", "-r", finished_run.name]) == 0
    solution = pd.read_csv("data/digits-demo/solution.csv", dtype=str)
    _confident_cache(finished_run, solution, n_sure=30)
    capsys.readouterr()
    args = ["train", "-c", "digits-demo", *SMOKE, f"pseudo={finished_run.name}", "pseudo_threshold=0.9"]
    args.append("lr=0.003")  # no LR range test: how the pseudo-labels join, not which LR they train at
    assert main(args) == 0
    said = cli_text(capsys)
    assert "pseudo-labels from" in said and "30 of 360" in said
    new = max(
        (p for p in finished_run.parent.iterdir() if p != finished_run), key=lambda p: p.stat().st_mtime
    )
    record = json.loads((new / "pseudo.json").read_text())
    assert record["added"] == 30 and sum(record["per_class"].values()) == 30
    oof = pd.read_csv(new / "oof.csv")
    assert not oof["image"].str.startswith("test/").any()  # never in a validation split
    assert len(oof) == len(pd.read_csv(finished_run / "oof.csv"))
    assert main(["runs", "-c", "digits-demo"]) == 0
    table = pd.read_csv(finished_run.parent / "runs.csv").set_index("run")
    assert table.loc[new.name, "pseudo"] == finished_run.name and "(pseudo)" in cli_text(capsys)


def test_pseudo_source_errors_are_one_line(finished_run, capsys):
    assert main(["train", "-c", "digits-demo", *SMOKE, "pseudo=nope"]) == 2
    assert "no run or blend 'nope'" in cli_text(capsys)
    assert main(["train", "-c", "digits-demo", *SMOKE, f"pseudo={finished_run.name}"]) == 2
    assert f"`make submit RUN={finished_run.name}`" in cli_text(capsys)
    assert main(["train", "-c", "digits-demo", *SMOKE, "pseudo_threshold=0.2"]) == 2
    assert "pseudo_threshold must lie in [0.5, 1]" in cli_text(capsys)


def test_the_report_says_what_pseudo_labels_a_run_used(finished_run):
    from kagglecv.report.page import write_report

    (finished_run / "pseudo.json").write_text(
        json.dumps({"source": "r0", "threshold": 0.9, "added": 3, "of": 360, "per_class": {"1": 2, "7": 1}})
    )
    page = write_report(finished_run).read_text()
    assert "pseudo-labels: 3 of 360 test images predicted by r0" in page and "1 2, 7 1" in page


def _blend_with_cached_test(root, probs_a, probs_b, metric="roc_auc"):
    """runs/toy/{a,b}/ with cached test predictions and runs/toy/blend-x/ weighting them equally."""
    from kagglecv.core.run_files import write_test_cache

    images = [f"test/{i}.png" for i in range(len(probs_a))]
    for name, probs in (("a", probs_a), ("b", probs_b)):
        (root / "runs" / "toy" / name).mkdir(parents=True)
        write_test_cache(root / "runs" / "toy" / name, probs, {"images": images, "classes": ["0", "1"]})
    blend_dir = root / "runs" / "toy" / "blend-x"
    blend_dir.mkdir()
    spec = {"members": ["a", "b"], "weights": [0.5, 0.5], "metric": metric, "classes": ["0", "1"]}
    (blend_dir / "blend.json").write_text(json.dumps(spec))
    return blend_dir


def test_pseudo_labels_of_a_rank_blend_come_from_probabilities_not_ranks(tmp_path, monkeypatch):
    """ROC AUC blends average ranks; ranks put the top image of every class at 1 whatever the models
    thought. Pseudo-labels must see the members' probabilities: none here reaches 0.9."""
    from types import SimpleNamespace

    from kagglecv.train.pseudo import pseudo_rows, source_probs

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    unsure = [np.stack([1 - p, p], 1) for p in (rng.uniform(0.4, 0.6, 40), rng.uniform(0.4, 0.6, 40))]
    _blend_with_cached_test(tmp_path, *unsure)
    probs, images, classes = source_probs("toy", "blend-x")
    np.testing.assert_allclose(probs, (unsure[0] + unsure[1]) / 2)
    comp = SimpleNamespace(slug="toy", data_dir=tmp_path / "data" / "toy")
    assert pseudo_rows(comp, "blend-x", 0.9, ["0", "1"]).empty


def test_a_blend_member_that_is_gone_is_named_with_advice_that_works(tmp_path, monkeypatch):
    from kagglecv.core.errors import UserError
    from kagglecv.train.pseudo import source_probs

    monkeypatch.chdir(tmp_path)
    sure = np.array([[0.99, 0.01], [0.02, 0.98]])
    _blend_with_cached_test(tmp_path, sure, sure)
    import shutil

    shutil.rmtree(tmp_path / "runs" / "toy" / "b")
    with pytest.raises(UserError) as e:
        source_probs("toy", "blend-x")
    said = str(e.value)
    assert "member run b is gone" in said and "make submit" not in said and "\n" not in said
