"""One name rule for run ids and competition slugs (core/names.py), checked by every command that
takes or picks a run: a path or a name with quotes is refused in one line, a folder in a shared
runs/ whose name breaks the rule is skipped with a line and never becomes "the latest run"."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from helpers.cli import cli_text
from kagglecv.cli import main
from kagglecv.core.competition import load_competition
from kagglecv.core.errors import UserError
from kagglecv.core.names import check_name
from kagglecv.core.runs import find_run, latest_unfinished

PLANTED = 'x"""; open("pwned", "w").write("1"); """'  # what a shared runs/ may hold


@pytest.mark.parametrize(
    "name", ["exp1", "20260101-120000-resnet18", "blend-0a1b2c3d", "digits-demo", "v1.2_a"]
)
def test_plain_names_pass(name):
    assert check_name(name, "RUN") == name


@pytest.mark.parametrize(
    "name",
    [
        "../other-comp/x",
        "a/b",
        "/abs",
        ".hidden",
        "..",
        "",
        'a"""b',
        "x y",
        "a\nb",
        "-rf",
        "a" * 101,
        PLANTED,
    ],
)
def test_paths_quotes_and_odd_names_are_refused_in_one_line(name):
    with pytest.raises(UserError, match="must be a plain name") as e:
        check_name(name, "RUN")
    assert "\n" not in str(e.value)


def _plant(root: Path, slug: str, name: str, finished: bool = True, when: float | None = None) -> Path:
    """A run folder as someone else left it: config.yaml, and summary.json when finished."""
    run = root / "runs" / slug / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: test_resnet\n")
    if finished:
        summary = {"competition": slug, "run": name, "cv_mean": 0.9, "finished_at": when or time.time()}
        (run / "summary.json").write_text(json.dumps(summary))
    if when:
        os.utime(run / "config.yaml", (when, when))
    return run


COMMANDS = {
    "kernel": ["kernel", "-c", "digits-demo", "-r"],
    "submit": ["submit", "-c", "digits-demo", "-r"],
    "export": ["export", "-c", "digits-demo", "-r"],
    "report": ["report", "-c", "digits-demo", "-r"],
    "train": ["train", "-c", "digits-demo", "--config", "configs/smoke.yaml", "-r"],
    "predict": ["predict", "-c", "digits-demo", "-r"],
}


@pytest.mark.parametrize("command", [*COMMANDS, "blend"])
def test_every_command_refuses_a_run_given_as_a_path(finished_run, capsys, command):
    """RUN=../other-comp/<run> named another competition's run folder (it exists): refused, untouched."""
    root = finished_run.parents[2]
    other = shutil.copytree(finished_run, root / "runs" / "other-comp" / "theirs")
    before = sorted(p.name for p in other.iterdir())
    bad = "../other-comp/theirs"
    if command == "blend":
        argv = ["blend", "-c", "digits-demo", "--runs", finished_run.name, bad]
    elif command == "predict":
        image = next((root / "data" / "digits-demo" / "test").iterdir())
        argv = [*COMMANDS[command], bad, str(image)]
    else:
        argv = [*COMMANDS[command], bad]
    capsys.readouterr()
    assert main(argv) == 2
    text = cli_text(capsys)
    assert "must be a plain name" in text or "is not a run folder of this project" in text, text
    assert sorted(p.name for p in other.iterdir()) == before  # nothing written into it
    assert not (root / "kernels").exists() and not (root / "exports").exists()


def test_a_report_of_a_run_folder_path_stays_inside_runs(finished_run, capsys):
    root = finished_run.parents[2]
    outside = shutil.copytree(finished_run, root.parent / f"{root.name}-elsewhere" / "run")
    assert main(["report", str(outside)]) == 2
    assert "is not a run folder of this project" in cli_text(capsys)
    assert not (outside / "report.html").exists()


def test_a_slug_that_breaks_the_rule_is_refused(workdir, capsys):
    """A competition YAML planted under a name with quotes never loads; COMP= with one is one line."""
    data = yaml.safe_load(Path("competitions/digits-demo.yaml").read_text())
    bad = 'c"""b'
    Path(f"competitions/{bad}.yaml").write_text(yaml.safe_dump({**data, "slug": bad}))
    with pytest.raises(UserError, match="must be a plain name"):
        load_competition(bad)
    assert main(["runs", "-c", "../digits-demo"]) == 2
    assert "COMP (a competition slug) must be a plain name" in cli_text(capsys)


def test_the_latest_run_is_never_a_planted_folder(finished_run, capsys):
    """With no RUN=, a newer finished folder whose name breaks the rule is skipped with a line."""
    root = finished_run.parents[2]
    planted = shutil.copytree(finished_run, root / "runs" / "digits-demo" / PLANTED)
    summary = json.loads((planted / "summary.json").read_text())
    summary["finished_at"] = time.time() + 3600  # the newest
    (planted / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert find_run("digits-demo", None).name == finished_run.name
    text = cli_text(capsys)
    assert "skipped" in text and "its name is no run id" in text

    from kagglecv.compete.blend import load_members
    from kagglecv.compete.runs_table import runs_frame

    assert PLANTED not in runs_frame("digits-demo", True)["run"].tolist()
    with pytest.raises(UserError, match="at least two finished runs"):
        load_members("digits-demo", None)  # the planted copy is no second member


def test_resume_never_picks_a_planted_folder(workdir, capsys):
    _plant(workdir, "digits-demo", "mine", finished=False, when=time.time() - 60)
    _plant(workdir, "digits-demo", PLANTED, finished=False)
    assert latest_unfinished("digits-demo").name == "mine"
    assert "skipped" in cli_text(capsys)


def test_the_latest_5_runs_are_the_latest_by_time_not_by_name(workdir):
    now = time.time()
    for i, name in enumerate("abcdefg"):  # run-a finished last, run-g first
        _plant(workdir, "digits-demo", f"run-{name}", when=now - 60 * i)
    with pytest.raises(UserError) as e:
        find_run("digits-demo", "nope")
    said = str(e.value)
    assert "(the latest 5 of 7, newest first): run-a, run-b, run-c, run-d, run-e" in said, said
    assert "run-f" not in said and "run-g" not in said
