import pytest
import yaml

from kagglecv.competition import known_competitions, load_competition
from kagglecv.errors import UserError


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
