import numpy as np
import pandas as pd
import pytest

from kagglecv.competition import Submission, load_competition
from kagglecv.errors import UserError
from kagglecv.submit import format_submission, score_submission, validate_submission

CLASSES = ["cat", "dog"]


@pytest.fixture
def comp(workdir):
    return load_competition("digits-demo")


def _sample(n=4):
    return pd.DataFrame({"id": range(1, n + 1), "label": 0})


def _probs():
    return np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])


@pytest.mark.parametrize(
    "kind, extra, expected",
    [
        ("class_name", {}, ["cat", "dog", "cat", "dog"]),
        ("class_index", {"classes": ["dog", "cat"]}, [1, 0, 1, 0]),
        ("probability", {"positive_class": "dog"}, [0.1, 0.8, 0.4, 0.7]),
    ],
)
def test_format_validate_score(comp, kind, extra, expected):
    comp.submission = Submission(id_column="id", label_columns=["label"], kind=kind, **extra)
    comp.metric = "accuracy" if kind != "probability" else "roc_auc"
    df = format_submission(comp, _sample(), _probs(), CLASSES)
    assert (
        df["label"].tolist() == pytest.approx(expected)
        if kind == "probability"
        else df["label"].tolist() == expected
    )
    validate_submission(df, _sample(), comp, CLASSES)
    solution = pd.DataFrame({"id": [1, 2, 3, 4], "label": ["cat", "dog", "dog", "dog"]})
    assert score_submission(df, solution, comp, CLASSES) == (0.75 if kind != "probability" else 1.0)


def test_class_probabilities_follow_sample_order(comp):
    comp.submission = Submission(id_column="id", kind="class_probabilities")
    comp.metric = "log_loss"
    sample = pd.DataFrame({"id": ["a", "b"], "dog": 0.5, "cat": 0.5})
    df = format_submission(comp, sample, np.array([[0.9, 0.1], [0.2, 0.8]]), CLASSES)
    assert list(df.columns) == ["id", "dog", "cat"] and df["dog"].tolist() == [0.1, 0.8]
    validate_submission(df, sample, comp, CLASSES)
    loss = score_submission(df, pd.DataFrame({"id": ["a", "b"], "label": ["cat", "dog"]}), comp, CLASSES)
    assert loss == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)


def _class_name(comp):
    comp.submission = Submission(id_column="id", label_columns=["label"], kind="class_name")
    return format_submission(comp, _sample(), _probs(), CLASSES)


def test_catches_wrong_columns(comp):
    df = _class_name(comp).rename(columns={"label": "Label"})
    with pytest.raises(UserError, match="columns"):
        validate_submission(df, _sample(), comp, CLASSES)


def test_catches_wrong_ids(comp):
    df = _class_name(comp)
    df.loc[2, "id"] = 99
    with pytest.raises(UserError, match=r"ids differ from sample_submission's at row 4: '99' vs '3'"):
        validate_submission(df, _sample(), comp, CLASSES)
    with pytest.raises(UserError, match="4 rows, sample_submission has 5"):
        validate_submission(_class_name(comp), _sample(5), comp, CLASSES)
    swapped = _class_name(comp).iloc[[1, 0, 2, 3]]
    with pytest.raises(UserError, match="ids differ"):
        validate_submission(swapped, _sample(), comp, CLASSES)


def test_catches_wrong_values(comp):
    df = _class_name(comp)
    df.loc[0, "label"] = "cow"
    with pytest.raises(UserError, match="unknown classes"):
        validate_submission(df, _sample(), comp, CLASSES)
    comp.submission = Submission(
        id_column="id", label_columns=["label"], kind="probability", positive_class="dog"
    )
    df = format_submission(comp, _sample(), _probs(), CLASSES)
    df.loc[1, "label"] = 1.5
    with pytest.raises(UserError, match=r"probabilities in \[0, 1\]"):
        validate_submission(df, _sample(), comp, CLASSES)
    df.loc[1, "label"] = None
    with pytest.raises(UserError, match="empty values"):
        validate_submission(df, _sample(), comp, CLASSES)
    comp.submission = Submission(id_column="id", label_columns=["label"], kind="class_index")
    df = format_submission(comp, _sample(), _probs(), CLASSES)
    df.loc[0, "label"] = 2
    with pytest.raises(UserError, match=r"class indices 0..1"):
        validate_submission(df, _sample(), comp, CLASSES)
