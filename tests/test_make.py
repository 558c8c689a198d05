"""What `make` hands kagglecv: every value as typed (nothing in it runs, `$$` stays `$$`), on/off
variables read one way, a variable kagglecv does not read named, a path with spaces kept whole.

A fake kagglecv (KCV=) prints the words it was given, one `[word]` a line, then $TORCHRUN: the tests
see exactly what make passed without a virtual environment."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import cli_text
from helpers.repo import REPO
from kagglecv.cli import main
from kagglecv.cli.make_words import img_paths
from kagglecv.cli.parser import Parser, parse
from kagglecv.core.errors import UserError

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

# the option each single-word variable becomes, per target (ARGS and RUNS are word lists)
OPTIONS = {
    "COMP": "--comp",
    "CONFIG": "--config",
    "RUN": "--run",
    "SRC": "--src",
    "FOLDS": "--folds",
    "GPUS": "--gpus",
    "PARALLEL": "--parallel",
    "TRIALS": "--trials",
    "BUDGET": "--budget",
    "STORAGE": "--storage",
    "MSG": "--message",
    "TTA": "--tta",
    "TOPK": "--top-k",
    "IMG": "--img",
    "UPLOAD": "--upload",
    "AGAIN": "--again",
    "KERNEL": "--kernel",
    "FORCE": "--force",
    "RESUME": "--resume",
    "PUSH": "--push",
    "LOOK": "--look",
}
TARGETS = {
    "help": [],
    "list": [],
    "data": ["COMP", "FORCE", "SRC"],
    "inspect": ["COMP"],
    "train": ["COMP", "CONFIG", "RUN", "FOLDS", "GPUS", "PARALLEL", "RESUME", "ARGS"],
    "tune": ["COMP", "CONFIG", "TRIALS", "BUDGET", "STORAGE", "ARGS"],
    "lr-find": ["COMP", "CONFIG", "ARGS"],
    "submit": ["COMP", "RUN", "UPLOAD", "AGAIN", "KERNEL", "MSG", "TTA"],
    "kernel": ["COMP", "RUN", "PUSH", "FORCE"],
    "report": ["COMP", "RUN", "LOOK"],
    "runs": ["COMP"],
    "blend": ["COMP", "RUNS"],
    "lb": ["COMP"],
    "predict": ["COMP", "RUN", "TOPK", "IMG"],
    "export": ["COMP", "RUN", "FORCE"],
    "config": ["CONFIG", "ARGS"],
    "bench": ["ARGS"],
    "demo": ["ARGS"],
}


@pytest.fixture
def kcv(tmp_path) -> Path:
    """Stands in for .venv/bin/kagglecv: prints its words, then the TORCHRUN it was given."""
    script = tmp_path / "kcv"
    script.write_text(
        '#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\nprintf "TORCHRUN[%s]\\n" "$TORCHRUN"\n'
    )
    script.chmod(0o755)
    return script


def make(target: str, *assignments: str, kcv: Path | str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = ["make", "-s", "-f", str(REPO / "Makefile"), "-o", "install", target, f"KCV={kcv}", *assignments]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


def real_kcv() -> str:
    """KCV= for the real command, this checkout's source first (the venv may point at another)."""
    return f"env PYTHONPATH={REPO / 'src'} KAGGLECV_NO_PROGRESS=1 {sys.executable} -m kagglecv"


@needs_make
def test_make_expands_nothing_typed_after_make(tmp_path, kcv):
    """`make help COMP='$(shell touch x)'` created x: make expands a command-line value when it
    exports it. Now every variable, on every target, reaches kagglecv as typed and nothing runs."""
    pwned = tmp_path / "pwned"
    evil = f"$(shell touch {pwned})`touch {pwned}`$$(touch {pwned})$${{HOME}}"
    names = [*OPTIONS, "ARGS", "RUNS", "TORCHRUN"]
    for target, uses in TARGETS.items():
        out = make(target, *[f"{name}=a {evil}" for name in names], kcv=kcv)
        assert out.returncode == 0 and out.stderr == "", (target, out.stderr)
        assert not pwned.exists(), target
        words = out.stdout.splitlines()
        if target == "help":
            assert "  train " in out.stdout
            continue
        assert words[0] == f"[{target}]" and words[-1] == f"TORCHRUN[a {evil}]", (target, words)
        for name in uses:
            if name in ("ARGS", "RUNS"):  # word lists: split at spaces, never globbed or expanded
                assert "\n".join(f"[{w}]" for w in f"a {evil}".split()) in out.stdout, (target, name, words)
            else:
                assert f"[{OPTIONS[name]}=a {evil}]" in words, (target, name, words)


@needs_make
def test_make_on_off_variables_pass_their_word_and_kagglecv_reads_it(workdir, kcv):
    """UPLOAD=0 uploaded (make's ${UPLOAD:+--upload} is on for any word): the word goes to kagglecv,
    which reads 1/true/yes/on and 0/false/no/off/empty, and stops on any other."""
    for target, flags in {
        "submit": ["UPLOAD", "AGAIN", "KERNEL"],
        "train": ["RESUME"],
        "data": ["FORCE"],
    }.items():
        words = make(target, *[f"{f}=0" for f in flags], kcv=kcv).stdout.splitlines()
        assert all(f"[{OPTIONS[f]}=0]" in words for f in flags), words
    for target, flags in {"kernel": ["PUSH", "FORCE"], "report": ["LOOK"], "export": ["FORCE"]}.items():
        words = make(target, kcv=kcv).stdout.splitlines()  # not given: an empty word, off
        assert all(f"[{OPTIONS[f]}=]" in words for f in flags), words
    # the real command: a word that is neither is one line naming the variable, before anything runs
    out = make("submit", "UPLOAD=maybe", "COMP=digits-demo", kcv=real_kcv(), cwd=workdir)
    said = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0 and "Traceback" not in said
    assert "error: UPLOAD (--upload) is on or off, not 'maybe': 1, true, yes or on turns it on" in said


@pytest.mark.parametrize(
    "word, on",
    [("1", True), ("true", True), ("YES", True), (" On ", True), ("0", False), ("false", False)]
    + [("No", False), ("OFF", False), ("", False)],
)
def test_every_switch_reads_on_and_off_words_and_alone_is_on(word, on):
    for command, option in (
        ("submit", "upload"),
        ("submit", "kernel"),
        ("train", "resume"),
        ("data", "force"),
    ):
        assert getattr(parse([command, f"--{option}={word}"]), option) is on, (command, option)
        assert getattr(parse([command, f"--{option}"]), option) is True  # the CLI's own spelling
    for command, option in (("kernel", "push"), ("kernel", "force"), ("report", "look"), ("export", "force")):
        assert getattr(parse([command, f"--{option}={word}"]), option) is on, (command, option)
    assert parse(["data", f"--draft={word}"]).draft is on
    assert Parser.switches >= {"--upload", "--kernel", "--force", "--resume", "--push", "--look", "--draft"}


def test_a_switch_word_that_is_neither_on_nor_off_is_one_line(workdir, capsys):
    for argv, name in (
        (["submit", "--upload=2"], "UPLOAD (--upload)"),
        (["train", "--resume=resume"], "RESUME (--resume)"),
        (["kernel", "--push=y"], "PUSH (--push)"),
        (["export", "--force=-1"], "FORCE (--force)"),
    ):
        assert main(argv) == 2
        said = cli_text(capsys)
        assert said.startswith(f"error: {name} is on or off, not"), said
        assert "1, true, yes or on turns it on; 0, false, no, off or nothing leaves it off" in said


def test_a_switch_after_a_double_dash_is_left_alone():
    assert parse(["predict", "--", "--upload=0.png"]).images == ["--upload=0.png"]


@pytest.mark.parametrize("word, on", [("1", True), ("true", True), ("false", False), ("no", False)])
def test_allow_loopback_reads_the_switch_words(monkeypatch, word, on):
    """KAGGLECV_ALLOW_LOOPBACK=false let loopback through (anything but "" and "0" was on)."""
    from kagglecv.prepare.sources import download

    for spelling in (word, word.upper()):
        monkeypatch.setenv(download.ALLOW_LOOPBACK_ENV, spelling)
        assert download.allow_loopback() is on
    monkeypatch.setenv(download.ALLOW_LOOPBACK_ENV, "sometimes")
    with pytest.raises(UserError, match="KAGGLECV_ALLOW_LOOPBACK is on or off, not 'sometimes'"):
        download.allow_loopback()


@needs_make
def test_make_names_a_variable_kagglecv_does_not_read(kcv):
    """`make train run=x epochs=3` trained with neither, in silence."""
    out = make("train", "run=x", "epochs=3", "RUN=y", "CUDA_VISIBLE_DEVICES=1", "OMP_NUM_THREADS=2", kcv=kcv)
    assert out.returncode == 0 and "[--run=y]" in out.stdout.splitlines()  # still runs
    lines = out.stderr.splitlines()
    assert len(lines) == 2, lines  # one line each; KCV, CUDA_... and OMP_... pass through unnamed
    (run,) = [line for line in lines if "run= " in line]
    assert (
        "run= is not a kagglecv make variable, kagglecv ignores it: make variables are upper case: RUN="
        in run
    )
    (epochs,) = [line for line in lines if "epochs= " in line]
    assert 'recipe settings go in ARGS: ARGS="epochs=3"; make variables: PYTHON COMP CONFIG RUN' in epochs
    assert make("help", "Comp=x", kcv=kcv).stderr.count("upper case: COMP=") == 1  # help too


@needs_make
def test_make_passes_a_path_with_spaces_whole(tmp_path, kcv):
    words = make("predict", "IMG=my dir/a b.png", kcv=kcv).stdout.splitlines()
    assert "[--img=my dir/a b.png]" in words, words


def test_img_is_one_path_when_it_names_one_else_words_split_as_the_shell_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my dir").mkdir()
    for name in ("my dir/a b.png", "my dir/c.png", "d.png"):
        (tmp_path / name).write_bytes(b"")
    assert img_paths("") == [] and img_paths("  ") == []
    assert img_paths("my dir/a b.png") == ["my dir/a b.png"]
    assert img_paths("my dir") == ["my dir"]
    assert img_paths("my dir/*.png") == ["my dir/*.png"]  # a glob with a space, left to predict
    assert img_paths("d.png my\\ dir/c.png") == ["d.png", "my dir/c.png"]
    assert img_paths("'my dir/a b.png' d.png \"my dir\"/c.png *.png") == [
        "my dir/a b.png",
        "d.png",
        "my dir/c.png",
        "*.png",
    ]
    assert img_paths("gone.png") == ["gone.png"]  # one word: predict names it
    with pytest.raises(UserError, match=r"IMG='my dir/x.png' is neither one path nor 2 paths: 'my' does not"):
        img_paths("my dir/x.png")
    assert img_paths("'my dir/x.png' d.png") == ["my dir/x.png", "d.png"]  # quoted: predict names it
    with pytest.raises(UserError, match="a quote is not closed"):
        img_paths("'my dir/a b.png")


@needs_make
@pytest.mark.slow  # ~8 s: the real predict, through make
def test_make_predict_on_a_path_with_spaces(finished_run):
    """make predict IMG="my dir/a b.png" asked about `my` and `dir/a`, which do not exist."""
    root = finished_run.parents[2]
    (root / "my dir").mkdir()
    first = sorted((root / "data" / "digits-demo" / "test").glob("*.png"))[0]
    shutil.copy(first, root / "my dir" / "a b.png")
    out = make("predict", "IMG=my dir/a b.png", "COMP=digits-demo", kcv=real_kcv(), cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    (csv,) = (root / "predictions").glob("*.csv")
    assert "my dir/a b.png" in csv.read_text()


@needs_make
def test_make_tune_budget_nonsense_is_one_line(workdir):
    """BUDGET=-5m reached argparse as an option of its own ("expected one argument" and the usage);
    0m asked for a study that starts no trial."""
    for budget, why in [("-5m", "look like 600s, 30m or 2h"), ("abc", "look like 600s, 30m or 2h")] + [
        ("0m", "be 1 second or more"),
        ("0", "be 1 second or more"),
    ]:
        out = make("tune", f"BUDGET={budget}", "COMP=digits-demo", kcv=real_kcv(), cwd=workdir)
        said = " ".join((out.stdout + out.stderr).split())
        assert out.returncode != 0 and "Traceback" not in said and "usage:" not in said, said
        assert f"error: BUDGET must {why}, got '{budget}'" in said
    assert not (workdir / "runs").exists()


def test_tune_trials_zero_is_one_line(workdir, capsys):
    assert main(["tune", "--comp", "digits-demo", "--config", "configs/tune-demo.yaml", "--trials", "0"]) == 2
    assert "TRIALS must be 1 or more, got '0' (empty for no limit)" in cli_text(capsys)


GENERATED = [
    "submissions/digits-demo-20240101-120000.csv",
    "submissions/digits-demo-20240101-120000.json",
    "submissions/log.csv",
    "submissions/.upload.lock",
    "configs/tuned-digits-demo.yaml",
    "configs/.tuned-digits-demo.yaml.1234.tmp",
    "data/digits-demo/folds.csv",
    "data/.digits-demo.lock",
    "runs/digits-demo/r1/summary.json",
    "runs/digits-demo/tune.db",
    "exports/digits-demo-r1/model.json",
    "kernels/digits-demo-r1/notebook.ipynb",
    "predictions/digits-demo-r1.csv",
    ".venv/bin/kagglecv",
]
KEPT = ["submissions/.gitkeep", "configs/default.yaml", "configs/my-recipe.yaml", "competitions/pets.yaml"]


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)
def test_git_ignores_every_kind_of_file_kagglecv_writes():
    """submissions/*.json and configs/tuned-*.yaml showed up in `git status` to be committed."""
    out = subprocess.run(  # the checkout's .gitignore alone: no global excludes file
        ["git", "-c", "core.excludesFile=", "check-ignore", "--no-index", "-v", "-n", *GENERATED, *KEPT],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    rule = {path: source for source, path in (line.split("\t") for line in out.stdout.splitlines())}
    assert set(rule) == {*GENERATED, *KEPT}, out.stderr

    def ignored(path: str) -> bool:
        return rule[path].startswith(".gitignore:") and not rule[path].split(":", 2)[2].startswith("!")

    assert [p for p in GENERATED if not ignored(p)] == []
    assert [p for p in KEPT if ignored(p)] == []
