"""A Kaggle slug with no YAML: `kagglecv data <slug>` downloads it and drafts competitions/<slug>.yaml
from what came. Each shipped competition's files, served under a new name, must be read back into
(nearly) the shipped YAML and then prepared."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers.cli import cli_text
from helpers.kaggle_fake import EXPECTED, FakeKaggle, competition_zip, use_fake_kaggle
from kagglecv.cli import main
from kagglecv.prepare.sources import kaggle as ksrc

SLUG = "mystery-contest"
# the sample submission alone cannot tell: histopathologic's and siim-isic's samples hold 0, like a class name
SUBMISSION_GUESS_DIFFERS = {"histopathologic-cancer-detection", "siim-isic-melanoma-classification"}


@pytest.fixture
def fake(workdir, monkeypatch):
    monkeypatch.setattr(ksrc, "RETRY_DELAYS", (0.0,))
    with FakeKaggle({}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home")
        yield server


@pytest.mark.parametrize("shipped", sorted(EXPECTED))
def test_draft_reads_back_the_shipped_yaml(fake, workdir, shipped, capsys):
    fake.competitions[SLUG] = competition_zip(shipped)
    assert main(["data", SLUG]) == 0, cli_text(capsys)
    text = cli_text(capsys)
    assert f"wrote a DRAFT competitions/{SLUG}.yaml" in text and "CHECK" in text
    draft = yaml.safe_load((workdir / "competitions" / f"{SLUG}.yaml").read_text())
    want = yaml.safe_load((workdir / "competitions" / f"{shipped}.yaml").read_text())
    assert draft["layout"]["kind"] == want["layout"]["kind"]
    for key in (
        "train_dir",
        "test_dir",
        "labels_csv",
        "id_column",
        "label_column",
        "label_columns",
        "train_csv",
    ):
        assert draft["layout"].get(key) == want["layout"].get(key), key
    sub, want_sub = draft["submission"], want["submission"]
    assert sub["id_column"] == want_sub["id_column"] and sub["id_is"] == want_sub.get("id_is", "stem")
    assert sub.get("label_columns", []) == want_sub.get("label_columns", [])
    if shipped not in SUBMISSION_GUESS_DIFFERS:
        assert sub["kind"] == want_sub["kind"]
        assert sub.get("positive_class") == want_sub.get("positive_class")
        assert sub.get("classes") == want_sub.get("classes")
    info = json.loads((workdir / "data" / SLUG / "prepared.json").read_text())
    classes, per_class, n_test = EXPECTED[shipped]
    assert info["classes"] == sorted(classes) and info["n_test"] == n_test
    assert set(info["train_counts"].values()) == {per_class}


def test_unknown_everywhere(fake, workdir, capsys):
    assert main(["data", SLUG]) == 2
    text = cli_text(capsys)
    assert f"unknown competition '{SLUG}'" in text and f"Kaggle has no competition '{SLUG}' (404" in text
    assert not (workdir / "competitions" / f"{SLUG}.yaml").exists()
    assert not (workdir / "data" / SLUG / "raw").exists()


def test_typo_of_known_slug_does_not_download(fake, workdir, capsys):
    assert main(["data", "dogs-vs-kats"]) == 2
    text = cli_text(capsys)
    assert "Did you mean 'dogs-vs-cats'?" in text and "--draft" in text
    assert fake.requests == []


def test_wrong_case_slug_does_not_download(fake, workdir, capsys):
    assert main(["data", "Dogs-Vs-Cats"]) == 2
    assert "Did you mean 'dogs-vs-cats'? (Kaggle slugs are lower-case)" in cli_text(capsys)
    assert fake.requests == []


def test_draft_never_replaces_an_existing_yaml(fake, workdir, capsys):
    """`--draft` on a YAML the user edited writes <slug>.draft.yaml beside it and says what differs."""
    fake.competitions[SLUG] = competition_zip("dogs-vs-cats")
    assert main(["data", SLUG]) == 0, cli_text(capsys)
    path = workdir / "competitions" / f"{SLUG}.yaml"
    edited = path.read_text().replace("hflip: true", "hflip: false") + "# my own note\n"
    path.write_text(edited)
    capsys.readouterr()
    assert main(["data", SLUG, "--draft"]) == 0
    text = cli_text(capsys)
    assert path.read_text() == edited and "no competitions/" not in text
    draft = yaml.safe_load((workdir / "competitions" / f"{SLUG}.draft.yaml").read_text())
    assert draft["hflip"] is True
    assert f"kept your competitions/{SLUG}.yaml" in text and "hflip: yours False, draft True" in text
    assert main(["list"]) == 0 and f"{SLUG}.draft" not in cli_text(capsys)  # a draft is no competition


def test_no_sample_submission_names_the_yaml_to_write(fake, workdir, capsys):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train/cat.1.jpg", b"1")
    fake.competitions[SLUG] = buf.getvalue()
    assert main(["data", SLUG]) == 2
    assert f"write competitions/{SLUG}.yaml by hand" in cli_text(capsys)
