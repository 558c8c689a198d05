"""User errors end in one or two clear lines and exit code 2 -- never a traceback."""

import shutil
import subprocess
import sys

import pytest

from helpers.cli import cli_text
from helpers.repo import REPO
from helpers.runs import interrupted_at_validation
from kagglecv.cli import main


def test_unknown_competition_lists_known(workdir, capsys):
    assert main(["data", "dogs-vs-kats"]) == 2
    assert "unknown competition 'dogs-vs-kats'" in cli_text(capsys)


def test_data_without_comp(workdir, capsys):
    assert main(["data"]) == 2
    assert "make data COMP=<slug>" in cli_text(capsys)


def test_malformed_competition_yaml(workdir, capsys):
    (workdir / "competitions" / "broken.yaml").write_text("slug: broken\ntitle: [\n")
    assert main(["data", "broken"]) == 2
    assert "broken.yaml: not valid YAML" in cli_text(capsys)


def test_config_typo(workdir, capsys):
    # no data prepared: the recipe is checked first, so the typo is what the user hears about
    assert main(["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml", "epoch=2"]) == 2
    assert "unknown config key 'epoch'. Did you mean 'epochs'?" in cli_text(capsys)


def test_train_before_data(workdir, capsys):
    assert main(["train", "--config", "configs/smoke.yaml"]) == 2
    assert "none prepared yet" in cli_text(capsys)
    assert main(["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml"]) == 2
    assert "not prepared yet: run `make data COMP=digits-demo`" in cli_text(capsys)


def test_submit_before_train(digits, capsys):
    assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "no finished training run for digits-demo" in cli_text(capsys)


def test_run_with_missing_checkpoint(finished_run, capsys):
    run_dir = finished_run
    (run_dir / "fold1.pt").unlink()
    capsys.readouterr()
    assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "missing fold1.pt" in cli_text(capsys)
    (run_dir / "fold0.pt").write_bytes(b"not a checkpoint")
    assert main(["submit", "--comp", "digits-demo", "--run", run_dir.name]) == 2
    assert "fold0.pt: unreadable checkpoint" in cli_text(capsys)
    assert main(["submit", "--comp", "digits-demo", "--run", "nope"]) == 2
    assert "no run 'nope'" in cli_text(capsys)


@pytest.mark.slow
def test_console_script_exit_code(workdir):
    """The installed entry point, as `make` calls it: exit 2 and a one-line message."""
    proc = subprocess.run([sys.executable, "-m", "kagglecv", "data", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "unknown competition 'nope'" in proc.stdout


@pytest.mark.parametrize(
    "change, message",
    [
        ("n_folds: five", "'n_folds' must be int"),
        ("n_folds: 1", "n_folds must be at least 2"),
        ("hflip: maybe", "'hflip' must be bool"),
        ("source: {kind: builtin, dataset: sklearn-digits, test_fraction: 2}", "test_fraction must lie in"),
    ],
)
def test_competition_yaml_values_are_checked(workdir, capsys, change, message):
    text = (workdir / "competitions" / "digits-demo.yaml").read_text().replace("slug: digits-demo", "slug: x")
    (workdir / "competitions" / "x.yaml").write_text(
        _replace_key(text.splitlines(), change.split(":")[0], change)
    )
    assert main(["data", "x"]) == 2
    assert message in cli_text(capsys)


def _replace_key(lines: list[str], key: str, change: str) -> str:
    """The YAML with top-level `key` (and its indented block) replaced by `change`."""
    out, skipping = [], False
    for line in lines:
        if line.startswith(key + ":"):
            skipping = True
            out.append(change)
            continue
        if skipping and line.startswith(" "):
            continue
        skipping = False
        out.append(line)
    if change not in out:
        out.append(change)
    return "\n".join(out) + "\n"


def test_sample_submission_that_is_not_a_csv(finished_run, capsys):
    digits = finished_run.parents[2]
    sample = digits / "data" / "digits-demo" / "sample_submission.csv"
    sample.write_text("a;b\n1;2\n")
    capsys.readouterr()
    assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "has no 'ImageId' column" in cli_text(capsys)
    sample.write_bytes(b"")
    assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "not a readable CSV" in cli_text(capsys)


def test_run_names_stay_inside_runs(digits, capsys):
    assert (
        main(["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml", "--run", "../../evil"]) == 2
    )
    assert "RUN must be a plain name" in cli_text(capsys)
    assert not (digits.parent / "evil").exists()


SMOKE = ["--comp", "digits-demo", "--config", "configs/smoke.yaml", "lr=0.002", "folds=1"]


def test_edited_csvs_give_one_line_not_a_traceback(finished_run, capsys):
    """A hand-edited folds.csv, sample_submission.csv or solution.csv is named with the fix."""
    runs = finished_run.parent
    data = finished_run.parents[2] / "data" / "digits-demo"
    folds = data / "folds.csv"
    good = folds.read_text()
    folds.write_text(good.replace("image,label,fold", "path,label,fold", 1))
    assert main(["train", *SMOKE]) == 2
    assert "folds.csv lacks column(s) ['image']" in cli_text(capsys)
    lines = good.splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",x"
    folds.write_text("\n".join(lines) + "\n")
    assert main(["train", *SMOKE]) == 2
    assert "fold 'x' is not a fold number" in cli_text(capsys)
    assert [p.name for p in runs.iterdir()] == [finished_run.name]  # no run folder begun
    folds.write_text(good)

    solution = data / "solution.csv"
    right = solution.read_text()
    solution.write_text(right.replace("label", "target", 1))
    capsys.readouterr()
    assert main(["submit", "--comp", "digits-demo"]) == 2
    text = cli_text(capsys)
    assert "is written and checked, but cannot be scored" in text and "lacks column(s) ['label']" in text
    rows = right.splitlines()
    rows[1] = rows[1].rsplit(",", 1)[0] + ",purple"
    solution.write_text("\n".join(rows) + "\n")
    assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "unknown labels ['purple']" in cli_text(capsys)
    solution.write_text(right)
    sample = data / "sample_submission.csv"
    sample.write_text(sample.read_text().splitlines()[0] + "\n")
    assert main(["submit", "--comp", "digits-demo"]) == 2
    assert "lists no ids (only a header)" in cli_text(capsys)


def test_sample_columns_must_be_training_classes(workdir):
    import pandas as pd

    from kagglecv.compete.submit import check_classes
    from kagglecv.core.competition import load_competition
    from kagglecv.core.errors import UserError

    comp = load_competition("dog-breed-identification")
    sample = pd.DataFrame({"id": ["a"], "beagle": [0.5], "poodle": [0.5]})
    check_classes(comp, sample[["id", "beagle"]], ["beagle", "pug"])
    with pytest.raises(UserError, match=r"sample_submission.csv's columns name \['poodle'\]"):
        check_classes(comp, sample, ["beagle", "pug"])


SMALL = ["--comp", "digits-small", "--config", "configs/smoke.yaml", "lr=0.002", "folds=1"]


def test_interrupted_training_says_how_to_continue(digits_small, monkeypatch, capsys):
    with interrupted_at_validation(monkeypatch, 1):
        assert main(["train", *SMALL]) == 130
    assert "`make train RESUME=1 RUN=<the run above>` continues it" in cli_text(capsys)


def test_resume_prefers_the_run_that_trained_something(digits_small, monkeypatch, capsys):
    """A run that failed before its first epoch leaves no folder; a stale stub is passed over."""
    runs = digits_small / "runs" / "digits-small"
    with interrupted_at_validation(monkeypatch, 2):
        assert main(["train", *SMALL, "epochs=2"]) == 130
    (begun,) = runs.iterdir()
    stub = runs / "zz-stub"  # sorts last: an OOM-killed start, say
    stub.mkdir()
    (stub / "config.yaml").write_text((begun / "config.yaml").read_text())
    assert main(["train", *SMALL, "pretrained_file=nope.pth"]) == 2
    assert "pretrained_file nope.pth not found" in cli_text(capsys)
    assert sorted(p.name for p in runs.iterdir()) == [begun.name, "zz-stub"]
    assert main(["train", "--resume", "--comp", "digits-small"]) == 0
    assert f"resuming runs/digits-small/{begun.name}" in cli_text(capsys)
    assert (begun / "summary.json").exists()


def test_cli_rough_edges(workdir, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "kagglecv 0." in capsys.readouterr().out
    for args in (["bench", "--batch-size", "0"], ["bench", "--workers", "-1"], ["train", "--epochs", "3"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "must be 1 or more, got 0" in err and "must be 0 or more, got -1" in err and "e.g. epochs=3" in err
    # brackets in a message survive rich's markup
    assert (
        main(["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml", "--run", "a[bold]b"]) == 2
    )
    assert "got 'a[bold]b'" in cli_text(capsys)
    monkeypatch.chdir(tmp_path / "..")
    assert main(["list"]) == 2
    assert "no competitions/ folder in" in cli_text(capsys)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_variables_cannot_inject_shell(tmp_path):
    """Each variable reaches kagglecv as one word, whatever it holds; nothing in it runs."""
    kcv = tmp_path / "kcv"  # stands in for .venv/bin/kagglecv: prints the words it was given
    kcv.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\n')
    kcv.chmod(0o755)
    evil = {
        "COMP": f"; touch {tmp_path}/pwned #",
        "RUN": f"$$(touch {tmp_path}/pwned)",
        "MSG": f'x" ; touch {tmp_path}/pwned; echo "',
        "CONFIG": f"`touch {tmp_path}/pwned`",
        "FOLDS": f"0' ; touch {tmp_path}/pwned ; '",
        "ARGS": f"epochs=3 ; touch {tmp_path}/pwned",
    }
    uses = {  # each variable goes as one word --option=<value>
        "data": {"COMP": "--comp"},
        "inspect": {"COMP": "--comp"},
        "train": {"COMP": "--comp", "CONFIG": "--config", "RUN": "--run", "FOLDS": "--folds"},
        "lr-find": {"COMP": "--comp", "CONFIG": "--config"},
        "submit": {"COMP": "--comp", "RUN": "--run", "MSG": "--message"},
        "report": {"COMP": "--comp", "RUN": "--run"},
        "config": {"CONFIG": "--config"},
    }
    for target, names in uses.items():
        cmd = ["make", "-s", "-C", str(REPO), "-o", "install", target, f"KCV={kcv}"]
        out = subprocess.run(cmd + [f"{k}={v}" for k, v in evil.items()], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert not (tmp_path / "pwned").exists(), target
        words = out.stdout.splitlines()
        assert words[0] == f"[{target}]"
        for name, option in names.items():  # as typed: $$ stays $$ (tests/test_make.py: $(shell ...))
            assert f"[{option}={evil[name]}]" in words, (target, name, words)


def test_one_grammar_old_spellings_kept():
    """-c/--comp and -r/--run everywhere (-m for the message, as the kaggle CLI spells them); the
    older positional forms of data and report still work."""
    from kagglecv.cli.parser import parse

    assert parse(["data", "-c", "pets"]).comp == parse(["data", "pets"]).comp == "pets"
    assert parse(["data", "--comp", "pets", "--force"]).force
    for command in ("inspect", "train", "lr-find", "submit", "report"):
        assert parse([command, "-c", "pets"]).comp == "pets"
    for command in ("train", "submit", "report"):
        assert parse([command, "-r", "exp1"]).run == "exp1"
    assert parse(["report", "exp1", "--comp", "pets"]).run == "exp1"
    assert parse(["train", "--run-name", "exp1"]).run == "exp1"  # as the torchrun relaunch spells it
    args = parse(["submit", "-c", "pets", "-r", "exp1", "--upload", "-m", "bigger images"])
    assert (args.comp, args.run, args.upload, args.message) == ("pets", "exp1", True, "bigger images")


def test_two_different_names_for_one_thing(capsys):
    from kagglecv.cli.parser import parse

    with pytest.raises(SystemExit) as e:
        parse(["data", "pets", "-c", "dogs"])
    assert (
        e.value.code == 2
        and "two different comps given ('pets' and --comp 'dogs')" in capsys.readouterr().err
    )


def test_config_lists_every_key_with_its_meaning(workdir, capsys):
    import dataclasses

    from kagglecv.core.config import TrainConfig

    assert main(["config", "--config", "configs/default.yaml", "epochs=3"]) == 0
    text = cli_text(capsys)
    for f in dataclasses.fields(TrainConfig):  # one source: every key carries its meaning
        assert f.metadata["help"] and f.name in text, f.name
    for words in (
        "pct_start",
        "one-cycle warm-up",
        "workers",
        "cache",
        "amp",
        "configs/default.yaml + epochs=3",
    ):
        assert words in text
    assert main(["config", "--config", "configs/default.yaml", "epoch=3"]) == 2
    assert "unknown config key 'epoch'. Did you mean 'epochs'?" in cli_text(capsys)


@pytest.mark.parametrize("command", ["train", "lr-find", "demo"])
def test_config_typo_is_reported_before_torch_loads(workdir, command):
    code = (
        "import sys; from kagglecv.cli import main; "
        f"rc = main([{command!r}, 'epoch=2']); print('exit', rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir)
    assert "unknown config key 'epoch'" in out.stdout and out.stdout.strip().endswith("exit 2 False"), out


def test_make_data_of_an_unknown_competition_leaves_no_lock_behind(workdir, capsys):
    """`make data COMP=nope` failed as it should but left data/.nope.lock; a competition whose
    folder exists keeps its lock file (other processes may hold it open)."""
    assert main(["data", "nope"]) == 2
    assert "unknown competition 'nope'" in cli_text(capsys)
    assert not (workdir / "data" / ".nope.lock").exists() and not (workdir / "data" / "nope").exists()
