"""Shared fixtures: every test runs in its own working folder with the repo's competitions/ and
configs/, so data/, runs/ and submissions/ never touch the checkout."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


# Tests often share this 2-core machine with other work; one intra-op thread avoids OpenMP
# threads spinning against each other (which slows everything down many times over).
torch.set_num_threads(1)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name in ("competitions", "configs"):
        shutil.copytree(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLECV_NO_PROGRESS", "1")
    return tmp_path


@pytest.fixture(scope="session")
def digits_prepared(tmp_path_factory):
    """digits-demo prepared once per session; tests copy it instead of preparing again."""
    import os

    root = tmp_path_factory.mktemp("digits")
    shutil.copytree(REPO / "competitions", root / "competitions")
    old = os.getcwd()
    os.chdir(root)
    os.environ["KAGGLECV_NO_PROGRESS"] = "1"
    try:
        from kagglecv.competition import load_competition
        from kagglecv.layout import prepare

        prepare(load_competition("digits-demo"))
    finally:
        os.chdir(old)
    return root / "data"


@pytest.fixture
def digits(workdir, digits_prepared):
    shutil.copytree(digits_prepared, workdir / "data")
    return workdir


@contextlib.contextmanager
def interrupted_at_validation(monkeypatch, n: int):
    """Ctrl-C at training's n-th validation (the end of epoch n), as train() sees a user's interrupt."""
    import kagglecv.train as train_mod

    real, calls = train_mod.validate, {"n": 0}

    def validate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "validate", validate)
    try:
        yield
    finally:
        monkeypatch.setattr(train_mod, "validate", real)


def cli_text(capsys) -> str:
    """What a CLI call printed, on one line; a user never sees a traceback."""
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return " ".join(text.split())


@pytest.fixture
def fake(workdir, monkeypatch):
    """A fake Kaggle on loopback holding every shipped competition; the real client points at it."""
    from kaggle_fake import EXPECTED, FakeKaggle, competition_zip, use_fake_kaggle
    from kagglecv.sources import kaggle as ksrc

    monkeypatch.setattr(ksrc, "RETRY_DELAYS", (0.0, 0.0))
    with FakeKaggle({slug: competition_zip(slug) for slug in EXPECTED}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home")
        yield server
