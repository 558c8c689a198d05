"""TTA chosen on OOF: the candidate sets the competition allows, and the choice by the OOF metric."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kagglecv.core.competition import load_competition
from kagglecv.predict import tta


def test_candidate_sets_follow_the_flips_the_competition_allows():
    assert sorted(tta.candidate_sets(False, False)) == ["none", "scale1.15"]
    both = tta.candidate_sets(True, True)
    assert {"none", "hflip", "vflip", "hflip+vflip", "scale1.15", "hflip+vflip+scale1.15"} == set(both)
    assert both["hflip+vflip+scale1.15"] == [(None, 1.0), ("hflip", 1.0), ("vflip", 1.0), (None, 1.15)]


@pytest.mark.parametrize("helps", [True, False])
def test_a_view_is_kept_only_where_it_beats_plain_prediction(finished_run, monkeypatch, helps):
    """The real choose_tta over a real run's OOF rows; the views' probabilities are made up so that the
    larger scale fixes (or breaks) a third of the rows."""
    from kagglecv.ml.engine import pick_device
    from kagglecv.predict.ensemble import load_fold_models

    comp = load_competition("digits-demo")
    models = load_fold_models(finished_run, [0, 1], pick_device("cpu"))
    oof = json.loads((finished_run / "summary.json").read_text())
    classes = models[0].meta.classes
    import pandas as pd

    frame = pd.read_csv(finished_run / "oof.csv", dtype={"label": str})
    y = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    truth = np.eye(len(classes))[y]
    wrong = np.roll(truth, 1, axis=1)
    third = np.arange(len(y)) % 3 == 0
    plain = np.where(third[:, None], wrong, truth)
    scaled = truth if helps else wrong

    def fake_views(models, oof, data_root, sets):
        return {(None, 1.0): plain, (None, 1.15): scaled}

    monkeypatch.setattr(tta, "oof_views", fake_views)
    plan = tta.choose_tta(comp, finished_run, models)
    assert plan.name == ("scale1.15" if helps else "none")
    assert plan.scales == ([1.0, 1.15] if helps else [1.0])
    assert plan.scores["none"] == pytest.approx((~third).mean(), abs=1e-6)
    again = tta.choose_tta(comp, finished_run, models)  # cached: no second pass over the views
    assert again == plan and json.loads((finished_run / tta.CACHE).read_text())["name"] == plan.name
    assert oof["metric"] == "accuracy"


def test_the_report_shows_the_tta_table(tmp_path):
    from helpers.runs import write_synthetic_run
    from kagglecv.report.page import write_report

    # the table reads only the run's tta_oof.json: a small run folder made up as train writes it will do
    run_dir = tmp_path / "runs" / "dogs" / "r1"
    write_synthetic_run(run_dir, 2)
    plan = {"name": "scale1.15", "scores": {"none": 0.5, "scale1.15": 0.6}, "metric": "accuracy"}
    (run_dir / tta.CACHE).write_text(json.dumps(plan))
    page = write_report(run_dir, data_dir=tmp_path / "nowhere").read_text()
    assert "Test-time augmentation, chosen on OOF" in page and "scale1.15" in page and "✓" in page
