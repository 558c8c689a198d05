"""Shared fixtures: every test runs in its own working folder with the repo's competitions/ and
configs/, so data/, runs/ and submissions/ never touch the checkout. Plain code the tests share lies
in helpers/; torch and optuna are set up here without being imported (see `_after_import`)."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("helpers")  # their asserts (cli_text's) report as a test's do

from helpers.repo import REPO  # noqa: E402
from helpers.runs import FINISHED_RUN_ARGS  # noqa: E402


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` right after the first import of the top-level module `name`, by whatever
    imports it, and then steps aside."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None  # not an ordinary installed package: the other finders answer
        exec_module = spec.loader.exec_module

        def exec_then(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            self.then(module)

        spec.loader.exec_module = exec_then
        return spec


def _after_import(name: str, then) -> None:
    """`then(module)` once `name` is imported (now, if it already is): conftest configures torch and
    optuna without importing them, so collection and the tests that need neither never load them."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def _one_torch_thread(torch) -> None:
    # Tests often share this 2-core machine with other work; one intra-op thread avoids OpenMP
    # threads spinning against each other (which slows everything down many times over).
    torch.set_num_threads(1)


def _optuna_logs_through_logging(optuna) -> None:
    """Optuna's own log handler keeps the sys.stderr of the moment it is made, which under pytest is
    one test's capture, closed by the next test: route its records through Python's logging (as
    kagglecv's tune does), which pytest captures per test."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


_after_import("torch", _one_torch_thread)
_after_import("optuna", _optuna_logs_through_logging)

# pytest-xdist hands its workers COLUMNS=<the terminal's width>; kagglecv's console (imported after
# this) must size itself as it does in a plain pytest run, piped, or tables wrap differently.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.pop("COLUMNS", None)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name in ("competitions", "configs"):
        shutil.copytree(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLECV_NO_PROGRESS", "1")
    return tmp_path


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that `build(folder)` fills once for the whole test run, not once per xdist worker:
    the workers share their session folder's parent, the first one to get there builds under a lock
    (the others wait for it, or find it done). Tests only read it, or copy it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-<n>/, the run's own: popen-gw0/, popen-gw1/ ... lie in it
    from kagglecv.core.locks import waiting

    folder, done = base / name, base / f"{name}.done"
    with waiting(base / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@contextlib.contextmanager
def _inside(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    os.environ["KAGGLECV_NO_PROGRESS"] = "1"
    try:
        yield
    finally:
        os.chdir(old)


def _prepared(tmp_path_factory, slug: str) -> Path:
    """A builtin competition prepared in a folder of its own; returns that folder's data/."""

    def build(root: Path) -> None:
        shutil.copytree(REPO / "competitions", root / "competitions")
        with _inside(root):
            from kagglecv.core.competition import load_competition
            from kagglecv.prepare.layout import prepare

            prepare(load_competition(slug))

    return shared_once(tmp_path_factory, f"prepared-{slug}", build) / "data"


@pytest.fixture(scope="session")
def digits_prepared(tmp_path_factory):
    """digits-demo prepared once per session; tests copy it instead of preparing again."""
    return _prepared(tmp_path_factory, "digits-demo")


@pytest.fixture
def digits(workdir, digits_prepared):
    shutil.copytree(digits_prepared, workdir / "data")
    return workdir


@pytest.fixture(scope="session")
def digits_small_prepared(tmp_path_factory):
    return _prepared(tmp_path_factory, "digits-small")


@pytest.fixture
def digits_small(workdir, digits_small_prepared):
    """digits-small (200 training images, a ninth of digits-demo's epoch) prepared in this test's
    working folder: for tests that must train several times but only check how, not how well."""
    shutil.copytree(digits_small_prepared, workdir / "data")
    return workdir


@pytest.fixture(scope="session")
def finished_run_built(tmp_path_factory, digits_prepared):
    """One smoke training on digits-demo, once per session (see `finished_run`)."""

    def build(root: Path) -> None:
        for name in ("competitions", "configs"):
            shutil.copytree(REPO / name, root / name)
        shutil.copytree(digits_prepared, root / "data")
        with _inside(root):
            from kagglecv.core.competition import load_competition
            from kagglecv.core.config import load_config
            from kagglecv.train.run import train

            train(load_competition("digits-demo"), load_config("configs/smoke.yaml", FINISHED_RUN_ARGS))

    root = shared_once(tmp_path_factory, "finished-run", build)
    (run_dir,) = (root / "runs" / "digits-demo").iterdir()
    return root, run_dir.relative_to(root)


@pytest.fixture
def finished_run(digits, finished_run_built) -> Path:
    """A finished run in this test's own working folder (prepared digits-demo, as `digits`):
    runs/digits-demo/<run>/ with config.yaml, plan.json, lr_find.json/png, metrics.csv, fold0/1.pt,
    oof_fold0/1.csv, oof.csv and summary.json, trained once per session with configs/smoke.yaml +
    FINISHED_RUN_ARGS and copied here. Returns the run folder's absolute path (cwd is `digits`)."""
    root, rel = finished_run_built
    shutil.copytree(root / rel, digits / rel)
    return digits / rel


@pytest.fixture
def fake(workdir, monkeypatch):
    """A fake Kaggle on loopback holding every shipped competition; the real client points at it."""
    from helpers.kaggle_fake import EXPECTED, FakeKaggle, competition_zip, use_fake_kaggle
    from kagglecv.prepare.sources import kaggle as ksrc

    monkeypatch.setattr(ksrc, "RETRY_DELAYS", (0.0, 0.0))
    with FakeKaggle({slug: competition_zip(slug) for slug in EXPECTED}) as server:
        use_fake_kaggle(monkeypatch, server, workdir / "home")
        yield server


@pytest.fixture
def web(monkeypatch):
    """A loopback stand-in for the web (helpers.web.Web), for the scrape source, closed after the test."""
    from helpers.web import Web
    from kagglecv.prepare.sources import download

    monkeypatch.setenv(download.ALLOW_LOOPBACK_ENV, "1")  # the stand-in web lives on 127.0.0.1
    w = Web()
    yield w
    w.close()
