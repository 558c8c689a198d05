"""The task kind (core/task.py) and the metrics of every kind (core/metrics.py): each metric against a
hand-worked example or an independent formula, each constant baseline against the constants it beats."""

from __future__ import annotations

import numpy as np
import pytest

from kagglecv.core.errors import UserError
from kagglecv.core.metrics import (
    HIGHER_IS_BETTER,
    constant_score,
    map_at_k,
    score,
    score_multilabel,
    score_numeric,
)
from kagglecv.core.task import METRIC_KINDS, Task, parse_task


def qwk_by_hand(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """Quadratic weighted kappa from its definition: 1 - sum(W*O) / sum(W*E)."""
    observed = np.zeros((n, n))
    for i, j in zip(a, b, strict=True):
        observed[i, j] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = np.array([[(i - j) ** 2 for j in range(n)] for i in range(n)]) / (n - 1) ** 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_qwk_matches_its_definition_and_cuts_move_grades():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 300)
    pred = np.clip(truth + rng.normal(0, 0.9, 300), -1, 6)
    rounded = np.clip(np.floor(pred + 0.5), 0, 4).astype(int)
    assert score_numeric("qwk", truth, pred) == pytest.approx(qwk_by_hand(truth, rounded, 5))
    # cut-points decide the grades: everything below 10 is grade 0, so the constant scores 0
    assert score_numeric("qwk", truth, pred, cuts=[10, 11, 12, 13]) == pytest.approx(0.0)
    assert score_numeric("accuracy", [0, 1, 2], [0.4, 1.6, 2.2]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="cut-points"):
        score_numeric("qwk", truth, pred, cuts=[0.5])


def test_rmse_and_its_constant_baseline_is_the_mean():
    truth = np.array([10.0, 20.0, 60.0])
    assert score_numeric("rmse", truth, [10, 20, 50]) == pytest.approx(np.sqrt(100 / 3))
    assert constant_score("regression", "rmse", truth) == pytest.approx(truth.std())
    for c in (10.0, 25.0, 40.0):  # no other constant does better
        assert score_numeric("rmse", truth, np.full(3, c)) >= truth.std()


def test_multilabel_f_scores_by_hand():
    truth = np.array([[1, 1, 0], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.1], [0.1, 0.1, 0.8]])
    # row 1: P=1 R=0.5 -> F2 = 5PR/(4P+R) = 5/9; row 2 perfect
    assert score_multilabel("f2_samples", truth, probs) == pytest.approx((5 / 9 + 1) / 2)
    # per-column thresholds: the second column's 0.2 now counts, row 1 becomes perfect
    assert score_multilabel("f2_samples", truth, probs, [0.5, 0.15, 0.5]) == pytest.approx(1.0)
    # macro F1: columns 1.0, 0.0 (missed), 1.0; micro: tp 2, fp 0, fn 1 -> 4/5
    assert score_multilabel("f1_macro", truth, probs) == pytest.approx(2 / 3)
    assert score_multilabel("f1_micro", truth, probs) == pytest.approx(0.8)


def test_mean_column_auc_skips_columns_without_both_values():
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    probs = np.array([[0.9, 0.5], [0.2, 0.1], [0.4, 0.3], [0.3, 0.9]])
    assert score_multilabel("mean_column_auc", truth, probs) == pytest.approx(1.0)
    assert np.isnan(score_multilabel("mean_column_auc", np.zeros((3, 2)), np.ones((3, 2))))
    # single-label one-vs-rest columns (plant-pathology-2020's probability columns)
    assert score("mean_column_auc", np.array([0, 1, 2]), np.eye(3)) == pytest.approx(1.0)


def test_map_at_5_by_rank():
    probs = np.array([[0.5, 0.4, 0.1, 0, 0, 0], [0.1, 0.2, 0.7, 0, 0, 0], [0.9, 0.1, 0, 0, 0, 0]])
    # true class at rank 1 -> 1; rank 3 -> 1/3; rank 6 (not in the top 5) -> 0
    truth = np.array([0, 0, 5])
    assert map_at_k(truth, probs, 5) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert map_at_k(truth, probs, 1) == pytest.approx(1 / 3)


def test_multilabel_constant_beats_every_simple_constant():
    rng = np.random.default_rng(1)
    truth = (rng.random((200, 4)) < [0.9, 0.5, 0.2, 0.05]).astype(int)
    best = constant_score("multi_label", "f2_samples", truth)
    for tags in ([1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]):
        assert best >= score_multilabel("f2_samples", truth, np.tile(tags, (200, 1))) - 1e-12
    assert constant_score("multi_label", "mean_column_auc", truth) == pytest.approx(0.5)
    assert constant_score("ordinal", "qwk", np.array([0, 1, 2, 2, 3])) == pytest.approx(0.0)
    assert constant_score("ordinal", "accuracy", np.array([0, 2, 2, 3])) == pytest.approx(0.5)


def test_every_metric_has_a_direction_and_a_kind():
    assert set(METRIC_KINDS) == set(HIGHER_IS_BETTER)
    assert not HIGHER_IS_BETTER["rmse"] and HIGHER_IS_BETTER["qwk"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"kind": "multilabel"}, "task.kind must be one of"),
        ({"kind": "multi_label", "loss": "mse"}, "task.loss for multi_label"),
        ({"kind": "multi_label", "target_range": [0, 1]}, "ordinal and regression tasks only"),
        ({"kind": "regression", "target_range": [5, 1]}, "low must be below high"),
        ({"kind": "regression", "target_range": "1-100"}, "must be [low, high]"),
        ({"kind": "ordinal", "labels": "x"}, "unknown key"),
        (["ordinal"], "must be a kind"),
    ],
)
def test_bad_task_blocks_are_one_line(block, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        parse_task(block, "competitions/x.yaml")


def test_metric_must_fit_the_kind():
    parse_task({"kind": "ordinal"}, "x").check_metric("qwk", "x")
    with pytest.raises(UserError, match="qwk does not score a task of kind multi_label; one of"):
        parse_task({"kind": "multi_label"}, "x").check_metric("qwk", "x")
    with pytest.raises(UserError, match="metric must be one of"):
        Task().check_metric("kappa", "x")


def test_targets_checked_against_the_kind():
    task = parse_task({"kind": "regression", "target_range": [1, 100]}, "x")
    assert task.target_range == (1.0, 100.0) and task.head_loss == "mse" and not task.is_classification
    task.check_targets([1, 50.5, 100], "train.csv")
    with pytest.raises(UserError, match="outside task.target_range"):
        task.check_targets([1, 101], "train.csv")
    with pytest.raises(UserError, match="missing"):
        task.check_targets([1.0, float("nan")], "train.csv")
    with pytest.raises(UserError, match="'cat' is not a number"):
        task.check_targets([1, "cat"], "train.csv")
    with pytest.raises(UserError, match="whole numbers"):
        parse_task({"kind": "ordinal"}, "x").check_targets([0, 1.5], "train.csv")
    Task().check_targets(["cat", "dog"], "train.csv")  # single-label labels are names, unchecked here


def test_competition_files_name_the_task(tmp_path):
    """`task:` in a competition file: a string or a block; a metric the kind cannot use is one line
    naming the file; kinds training cannot handle yet are refused when the file loads."""
    import yaml

    from kagglecv.core.competition import load_competition

    base = yaml.safe_load(open("competitions/digits-demo.yaml"))
    (tmp_path / "x.yaml").write_text(yaml.safe_dump({**base, "slug": "x", "metric": "f1_macro"}))
    comp = load_competition("x", tmp_path)
    assert comp.task == Task() and comp.metric == "f1_macro"
    (tmp_path / "x.yaml").write_text(
        yaml.safe_dump({**base, "slug": "x", "task": "ordinal", "metric": "log_loss"})
    )
    with pytest.raises(UserError, match="x.yaml: metric log_loss does not score a task of kind ordinal"):
        load_competition("x", tmp_path)
    (tmp_path / "x.yaml").write_text(
        yaml.safe_dump({**base, "slug": "x", "task": "ordinal", "metric": "qwk"})
    )
    with pytest.raises(UserError, match="cannot be trained yet"):
        load_competition("x", tmp_path)
