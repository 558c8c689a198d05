import pytest
import yaml

from kagglecv.core.competition import known_competitions, load_competition, similar_competition
from kagglecv.core.errors import UserError


def _write(workdir, data, slug="x"):
    (workdir / "competitions" / f"{slug}.yaml").write_text(yaml.safe_dump(data))


def _valid():
    return yaml.safe_load(open("competitions/digits-demo.yaml")) | {"slug": "x"}


def test_every_shipped_competition_loads(workdir):
    assert "digits-demo" in known_competitions()
    for slug in known_competitions():
        assert load_competition(slug).slug == slug


def test_unknown_competition_lists_known(workdir):
    with pytest.raises(
        UserError, match=r"unknown competition 'digits-dem'. Did you mean 'digits-demo'\?.*Known: "
    ):
        load_competition("digits-dem")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"metrc": "accuracy"}, "unknown key 'metrc'. Did you mean 'metric'"),
        ({"metric": "top5"}, "metric must be one of"),
        ({"source": {"kind": "ftp"}}, "source.kind must be one of"),
        (
            {"submission": {"id_column": "id", "label_columns": ["l"], "kind": "probs"}},
            "submission.kind must be one of",
        ),
        (
            {"submission": {"id_column": "id", "label_columns": ["l"], "kind": "probability"}},
            "needs positive_class",
        ),
        ({"submission": {"label_columns": ["l"]}}, "needs at least 'id_column'"),
        ({"slug": "y"}, "differs from the file name"),
    ],
)
def test_malformed_competition(workdir, change, message):
    _write(workdir, _valid() | change)
    with pytest.raises(UserError, match=message):
        load_competition("x")


def test_missing_key_and_broken_yaml(workdir):
    data = _valid()
    del data["layout"]
    _write(workdir, data)
    with pytest.raises(UserError, match="missing required key 'layout'"):
        load_competition("x")
    (workdir / "competitions" / "x.yaml").write_text("slug: x\n  title: [oops\n")
    with pytest.raises(UserError, match="x.yaml: not valid YAML"):
        load_competition("x")


@pytest.mark.parametrize("typo", ["Dogs-Vs-Cats", "DOGS-VS-CATS", "dogs_vs_cats"])
def test_wrong_case_is_a_typo_too(workdir, typo):
    """Kaggle slugs are lower-case: a capitalised one is caught like any other typo."""
    with pytest.raises(UserError, match=rf"unknown competition '{typo}'. Did you mean 'dogs-vs-cats'\?"):
        load_competition(typo)
    # as strict as the check that guards a new Kaggle download (draft.py uses cutoff 0.8)
    assert similar_competition(typo, cutoff=0.8) == "dogs-vs-cats"
    assert similar_competition("some-new-competition", cutoff=0.8) is None


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (
            {"kind": "holdout", "holdot": 0.05},
            r"layout \(kind holdout\): unknown key 'holdot'. Did you mean 'holdout'\?",
        ),
        (
            {"kind": "csv_pixels", "label_colum": "label"},
            r"layout \(kind csv_pixels\): unknown key 'label_colum'. Did you mean 'label_column'\?",
        ),
        (
            {"kind": "class_folder"},
            r"layout.kind must be one of .* got 'class_folder'. Did you mean 'class_folders'\?",
        ),
    ],
)
def test_layout_typos_are_caught_on_load(workdir, layout, message):
    _write(workdir, _valid() | {"layout": layout})
    with pytest.raises(UserError, match=message):
        load_competition("x")


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"kind": "csv_pixels", "id_start": "one"}, r"layout \(kind csv_pixels\): 'id_start' must be int"),
        ({"kind": "label_in_name", "pattern": "^cat"}, r"x.yaml: layout.pattern '\^cat' needs a group"),
        ({"kind": "label_in_name", "pattern": "(cat"}, r"x.yaml: layout.pattern '\(cat' is not a regular"),
        ({"kind": "holdout", "holdout": 0.7}, r"x.yaml: layout.holdout must be a fraction between 0 and 0.5"),
    ],
)
def test_layout_values_are_checked_on_load(workdir, layout, message):
    _write(workdir, _valid() | {"layout": layout})
    with pytest.raises(UserError, match=message):
        load_competition("x")


def test_layout_defaults_live_in_the_options_class(workdir):
    _write(workdir, _valid() | {"layout": {"kind": "csv_labels"}})
    opts = load_competition("x").layout_options
    assert (opts.labels_csv, opts.id_column, opts.label_column, opts.train_dir) == (
        "train.csv",
        "id",
        "label",
        "train",
    )
    assert opts.sample_submission == "sample_submission.csv" and opts.group_distance == 6


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"kind": "folder", "path": ".", "min_sze": 3},
            r"x.yaml: source: unknown key 'min_sze'. Did you mean 'min_size'",
        ),
        ({"kind": "folder"}, r"x.yaml: source.path must name the image folder"),
        (
            {"kind": "folder", "path": ".", "workers": 0},
            r"x.yaml: source.min_size and workers must be at least 1",
        ),
        (
            {"kind": "builtin", "dataset": "mnist"},
            r"x.yaml: source.dataset must be one of sklearn-digits, got 'mnist'",
        ),
        ({"kind": "builtin", "dataset": "sklearn-digits", "side": "big"}, r"source: 'side' must be int"),
        (
            {"kind": "builtin", "dataset": "sklearn-digits", "test_fraction": 0.9},
            r"test_fraction must lie in",
        ),
    ],
)
def test_source_options_are_checked_before_fetching(workdir, source, message):
    from kagglecv.prepare import sources

    _write(workdir, _valid() | {"source": source})
    with pytest.raises(UserError, match=message):
        sources.check(load_competition("x"))
