"""Temperature scaling and clipping, chosen by nested CV on out-of-fold predictions."""

from __future__ import annotations

import numpy as np
import pytest

from kagglecv.core.metrics import score
from kagglecv.predict.postprocess import apply_postprocess, choose_postprocess, clip, temperature


def _overconfident(n: int = 1000, seed: int = 0):
    """70% accurate but always 99% sure: log loss that calibration should fix."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    right = rng.random(n) < 0.7
    pred = np.where(right, y, 1 - y)
    probs = np.full((n, 2), 0.01)
    probs[np.arange(n), pred] = 0.99
    return y, probs, np.arange(n) % 5


def test_temperature_and_clip_keep_rows_summing_to_one_and_the_order():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    for q in (temperature(p, 2.0), clip(p, 0.05)):
        assert q.sum(1) == pytest.approx([1, 1])
        assert (q.argmax(1) == p.argmax(1)).all()
    assert temperature(p, 2.0)[0, 0] < 0.9  # T > 1 softens


def test_overconfident_oof_gets_calibrated_and_scores_better():
    y, probs, folds = _overconfident()
    plan = choose_postprocess("log_loss", y, probs, folds)
    assert plan["kind"] != "none"
    assert plan["nested_log_loss"][plan["kind"]] < plan["nested_log_loss"]["none"]
    assert score("log_loss", y, apply_postprocess(plan, probs)) < score("log_loss", y, probs)


def test_well_calibrated_oof_is_left_alone():
    rng = np.random.default_rng(1)
    n = 2000
    p1 = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < p1).astype(int)  # labels drawn from the probabilities: calibrated
    probs = np.stack([1 - p1, p1], 1)
    plan = choose_postprocess("log_loss", y, probs, np.arange(n) % 5)
    after = score("log_loss", y, apply_postprocess(plan, probs))
    assert after == pytest.approx(score("log_loss", y, probs), abs=2e-3)


def test_other_metrics_get_nothing():
    y, probs, folds = _overconfident()
    assert choose_postprocess("accuracy", y, probs, folds)["kind"] == "none"
    assert apply_postprocess({"kind": "none"}, probs) is probs


def test_a_run_of_one_fold_keeps_its_probabilities_and_says_why(tmp_path, capsys):
    """FOLDS=0 leaves OOF rows of one fold: nothing to nest over, so submit used to stop on a KeyError."""
    import pandas as pd

    from kagglecv.predict.postprocess import postprocess_for_run

    y, probs, _ = _overconfident(100)
    oof = pd.DataFrame({"label": y.astype(str), "fold": 0, "p_0": probs[:, 0], "p_1": probs[:, 1]})
    oof.to_csv(tmp_path / "oof.csv", index=False)
    plan = postprocess_for_run("log_loss", tmp_path, ["0", "1"])
    assert plan["kind"] == "none" and "one fold" in plan["why"]
    assert "post-processing: none (the OOF predictions hold one fold" in capsys.readouterr().out
