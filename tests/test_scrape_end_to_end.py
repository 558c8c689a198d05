"""Done-when for own classes: `make data COMP=bjj-vs-aikido` against a loopback stand-in for the web
-> `make train CONFIG=configs/smoke.yaml` -> `make submit` scores the labelled holdout."""

from __future__ import annotations

import json

import pandas as pd

from helpers.images import encode, photo
from helpers.web import TINTS, result
from kagglecv.cli import main
from kagglecv.prepare.sources.search import SEARCH_URL_ENV


def test_scrape_train_submit(workdir, web, monkeypatch, capsys):
    spec = workdir / "competitions" / "bjj-vs-aikido.yaml"
    spec.write_text(
        spec.read_text().replace("search_pause: 2.0", "search_pause: 0")
    )  # no real engine to spare
    queries = {"bjj": "brazilian jiu jitsu", "aikido": "aikido"}
    web.searches = {}
    for k, (cls, tint) in enumerate(TINTS.items()):
        urls = [web.image(f"/{cls}/{i}.jpg", encode(photo(100 * k + i, tint))) for i in range(12)]
        urls.append(web.image(f"/{cls}/broken.jpg", b"<html>hotlink denied</html>"))
        urls.append(urls[0])  # found twice
        web.searches[queries[cls]] = [result(u) for u in urls]
    monkeypatch.setenv(SEARCH_URL_ENV, web.base + "/search")

    assert main(["data", "bjj-vs-aikido"]) == 0
    root = workdir / "data" / "bjj-vs-aikido"
    manifest = pd.read_csv(root / "raw" / "manifest.csv")
    assert (manifest["status"] == "kept").sum() == 24 and (manifest["status"] == "not_an_image").sum() == 2
    assert len(pd.read_csv(root / "solution.csv")) == 2

    assert main(["train", "--config", "configs/smoke.yaml"]) == 0
    capsys.readouterr()
    assert main(["submit"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out
    (run_dir,) = (workdir / "runs" / "bjj-vs-aikido").iterdir()
    record = json.loads((workdir / "submissions" / f"bjj-vs-aikido-{run_dir.name}.json").read_text())
    assert 0.0 <= record["test_score"] <= 1.0
    sub = pd.read_csv(record["file"])
    assert list(sub.columns) == ["id", "label"] and set(sub["label"]) <= {"bjj", "aikido"}

    assert main(["inspect"]) == 0
    assert "near-duplicate groups" in capsys.readouterr().out
