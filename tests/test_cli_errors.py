"""User errors end in one or two clear lines and exit code 2 -- never a traceback."""

import subprocess
import sys

import pytest

from conftest import cli_text
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


def test_config_typo(digits, capsys):
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


def test_run_with_missing_checkpoint(digits, capsys):
    assert main(["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml", "lr=0.002"]) == 0
    (run_dir,) = (digits / "runs" / "digits-demo").iterdir()
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
    proc = subprocess.run(
        [sys.executable, "-m", "kagglecv.cli", "data", "nope"], capture_output=True, text=True
    )
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


def test_sample_submission_that_is_not_a_csv(digits, capsys):
    assert (
        main(["train", "--comp", "digits-demo", "--config", "configs/smoke.yaml", "lr=0.002", "folds=1"]) == 0
    )
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
