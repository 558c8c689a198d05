"""Faults around training (issue 10): locks, which run is picked, weights files with code in them,
an image that broke after `make data`, GPUS=N errors before torchrun starts, no network at all."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers.cli import cli_text
from helpers.repo import REPO
from helpers.runs import FINISHED_RUN_ARGS
from kagglecv.cli import main
from kagglecv.core import locks
from kagglecv.core.errors import UserError
from kagglecv.core.runs import find_run, latest_unfinished

TINY = ["--comp", "digits-demo", "--config", "configs/smoke.yaml", "train_folds=1", "lr=0.003", "device=cpu"]
TINY_SMALL = ["--comp", "digits-small", *TINY[2:]]  # the same on digits-small (200 images)


# ---- locks -----------------------------------------------------------------------------------


def test_a_second_resume_of_the_same_run_refuses_in_one_line(finished_run, capsys):
    (finished_run / "summary.json").unlink()
    with locks.run_lock(finished_run, what="make train RESUME=1"):
        assert main(["train", "--comp", "digits-demo", "--run", finished_run.name, "--resume"]) == 2
    out = cli_text(capsys)
    assert (
        f"error: run {finished_run.name} is already being trained (pid {os.getpid()}: make train RESUME=1"
        in out
    )
    assert not (finished_run / "summary.json").exists()  # nothing gathered, nothing trained


def test_training_refuses_while_make_data_writes_the_data(digits, capsys):
    with locks.data_lock(digits / "data" / "digits-demo", exclusive=True, what="make data"):
        assert main(["train", *TINY]) == 2
    out = cli_text(capsys)
    assert "is being written by `make data`" in out and f"pid {os.getpid()}: make data" in out
    assert not (digits / "runs").exists()


def test_gpus_2_refuses_a_run_being_trained_before_launching(finished_run, capsys):
    (finished_run / "summary.json").unlink()
    with locks.run_lock(finished_run, what="make train"):
        rc = main(["train", "--comp", "digits-demo", "--run", finished_run.name, "--resume", "--gpus", "2"])
    out = cli_text(capsys)
    assert rc == 2 and f"run {finished_run.name} is already being trained" in out and "launching" not in out


# ---- which run -------------------------------------------------------------------------------


def _run(base, name, finished_at=None, mtime=None):
    run = base / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: test_resnet\n")
    if finished_at is not None:
        (run / "summary.json").write_text(json.dumps({"finished_at": finished_at}))
    if mtime is not None:
        (run / "fold0.last.pt").write_bytes(b"")
        for p in run.iterdir():
            os.utime(p, (mtime, mtime))
    return run


def test_the_latest_finished_run_is_chosen_by_finish_time_not_by_name(workdir, capsys):
    base = workdir / "runs" / "c"
    _run(base, "exp1", finished_at=time.time() - 3600)
    newer = _run(base, "20260101-120000-resnet50", finished_at=time.time() - 60)
    older = _run(base, "20250101-120000-resnet50")  # before finished_at was recorded: the file's time
    (older / "summary.json").write_text("{}")
    os.utime(older / "summary.json", (1, 1))
    assert find_run("c", None).name == newer.name
    out = cli_text(capsys)
    assert (
        f"using run {newer.name} (finished " in out
        and "the latest of 3 finished runs; RUN= picks another" in out
    )


def test_resume_picks_the_run_active_last_not_the_last_name(workdir, capsys):
    base = workdir / "runs" / "c"
    _run(base, "exp1", mtime=time.time() - 3600)
    newer = _run(base, "20250101-120000-resnet50", mtime=time.time() - 60)
    assert latest_unfinished("c").name == newer.name
    assert f"resuming run {newer.name} (last active" in cli_text(capsys)


def test_an_unfinished_run_points_to_resume(workdir):
    _run(workdir / "runs" / "c", "exp1")
    with pytest.raises(UserError, match=r"did not finish .*`make train RESUME=1 RUN=exp1` continues it"):
        find_run("c", "exp1")


def test_the_recorded_device_is_the_one_trained_on(finished_run, monkeypatch):
    from kagglecv.ml.engine import pick_device

    assert json.loads((finished_run / "summary.json").read_text())["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, device=cpu asked
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type == "cuda"


def test_resume_of_a_finished_run_leaves_it_as_it_is(finished_run, capsys):
    """RESUME=1 RUN=<finished run> gathered it again and rewrote finished_at: it became "the latest run"."""
    before = (finished_run / "summary.json").read_bytes()
    assert main(["train", "--comp", "digits-demo", "--run", finished_run.name, "--resume"]) == 0
    assert f"run {finished_run.name} is already finished" in cli_text(capsys)
    assert (finished_run / "summary.json").read_bytes() == before


def test_resume_after_make_data_split_again_refuses_in_one_line(finished_run, capsys):
    """n_folds edited, `make data` split again, then RESUME=1: the folds left would train on another
    split (images in oof.csv twice, a CV that means nothing)."""
    for name in ("fold1.pt", "oof_fold1.csv", "summary.json"):
        (finished_run / name).unlink()
    spec = finished_run.parents[2] / "competitions" / "digits-demo.yaml"
    spec.write_text(spec.read_text().replace("n_folds: 5", "n_folds: 3"))
    assert main(["data", "--comp", "digits-demo"]) == 0
    assert main(["train", "--comp", "digits-demo", "--run", finished_run.name, "--resume"]) == 2
    text = cli_text(capsys)
    assert f"error: run {finished_run.name} was started on another split" in text, text
    assert not (finished_run / "fold1.pt").exists()


def test_make_runs_judges_a_run_against_the_split_it_started_on(finished_run, capsys):
    """Folds 0,1 of a 5-fold split, the folds it was asked for: 2/5 and finished, whatever n_folds the
    competition says today."""
    spec = finished_run.parents[2] / "competitions" / "digits-demo.yaml"
    text = spec.read_text()
    for n in (2, 10):
        spec.write_text(text.replace("n_folds: 5", f"n_folds: {n}"))
        assert main(["runs", "--comp", "digits-demo"]) == 0
        row = pd.read_csv(finished_run.parent / "runs.csv").iloc[0]
        assert (row["folds"], row["state"]) == ("2/5", "finished"), cli_text(capsys)


# ---- weights files ---------------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.getcwd()}/pwned",))


def test_a_weights_file_with_code_in_its_pickle_is_refused(workdir):
    from kagglecv.ml.model import create_model

    evil = workdir / "evil.pt"
    torch.save({"conv1.0.weight": torch.zeros(1), "x": _RunsCode()}, evil)
    with pytest.raises(UserError, match=r"refused pretrained_file .*evil.pt: it holds pickled code"):
        create_model("test_resnet", num_classes=2, pretrained_file=str(evil))
    assert not (workdir / "pwned").exists()


def test_a_weights_file_for_another_model_is_named(workdir):
    import timm

    from kagglecv.ml.model import create_model

    path = workdir / "resnet.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=3).state_dict(), path)
    with pytest.raises(UserError, match="resnet.pth holds no weights for 'test_resnet'"):
        create_model("test_resnet", num_classes=2, pretrained_file=str(path))


# ---- an image that broke after `make data` -------------------------------------------------


def test_an_image_broken_after_make_data_is_replaced_with_one_warning(digits_small, capsys):
    import pandas as pd

    folds = pd.read_csv(digits_small / "data" / "digits-small" / "folds.csv")
    broken = digits_small / "data" / "digits-small" / folds["image"].iloc[5]
    broken.write_bytes(b"not an image any more")
    assert main(["train", *TINY_SMALL, "cache=none"]) == 0
    out = cli_text(capsys)
    assert out.count(f"warning: cannot decode {broken.relative_to(digits_small)}") == 1, out
    (run,) = (digits_small / "runs" / "digits-small").iterdir()
    assert json.loads((run / "summary.json").read_text())["fold_ids"] == [0]


def test_a_broken_image_in_the_memory_cache_is_replaced_by_one_of_its_class(digits, capsys):
    from kagglecv.core.competition import load_competition
    from kagglecv.core.config import load_config
    from kagglecv.train.train_data import TrainData

    comp = load_competition("digits-demo")
    probe = TrainData(comp, load_config("configs/smoke.yaml", ["cache=memory"]), 32)
    i = 7
    (comp.data_dir / probe.folds["image"].iloc[i]).write_bytes(b"")
    data = TrainData(comp, load_config("configs/smoke.yaml", ["cache=memory"]), 32)
    assert "warning: cannot decode" in cli_text(capsys)
    j = [k for k in range(i + 1, len(data.labels)) if data.labels[k] == data.labels[i]][0]  # the next one
    assert torch.equal(data.dataset[i][0], probe.dataset[j][0]) and data.dataset[i][1] == probe.labels[i]


# ---- GPUS=N: the errors come before torchrun ---------------------------------------------


def test_gpus_2_on_an_unprepared_competition_is_one_line_before_launching(workdir, capsys):
    assert main(["train", "--comp", "digits-demo", "--gpus", "2", "device=cpu"]) == 2
    out = cli_text(capsys)
    assert "error: digits-demo is not prepared yet: run `make data COMP=digits-demo` first" in out
    assert "launching" not in out and "ChildFailedError" not in out


def test_gpus_2_with_a_fold_that_does_not_exist_is_one_line_before_launching(digits, capsys):
    assert main(["train", *TINY, "--gpus", "2", "--folds", "7"]) == 2
    out = cli_text(capsys)
    assert "error: folds [7] do not exist: folds.csv has folds 0..4" in out and "launching" not in out


def _process_tree(pid: int) -> list[int]:
    """`pid` and every process under it (from /proc: Linux; elsewhere `pid` alone)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


@pytest.mark.slow  # torchrun starts two CPU processes that import torch and train: ~40 s
def test_gpus_2_with_lr_auto_finishes_instead_of_hanging_on_the_setup_lock(digits_small):
    """make train GPUS=2 with lr: auto: rank 1 took the run's setup lock and waited in the range test's
    broadcast for rank 0, which waited for the lock, forever. Here the ranks get a deadline instead."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "KAGGLECV_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    env["TORCHRUN"] = "--standalone"  # a free port: tests run side by side
    recipe = ["lr=auto", "lr_find_iters=5", "train_folds=1", "img_size=16", "device=cpu"]
    cmd = [sys.executable, "-m", "kagglecv", "train", *TINY_SMALL[:4], *recipe, "--gpus", "2"]
    proc = subprocess.Popen(cmd, cwd=digits_small, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        out = proc.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        for pid in _process_tree(proc.pid):  # torchrun's ranks live in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out = proc.communicate()[0]
        pytest.fail(f"make train GPUS=2 with lr: auto hangs:\n{out}")
    assert proc.returncode == 0, out
    (run,) = (digits_small / "runs" / "digits-small").iterdir()  # one run, no stub beside it
    assert (run / "lr_find.json").exists() and (run / "summary.json").exists(), out


def test_ctrl_c_in_the_range_test_leaves_no_stub_run_for_resume(digits_small, monkeypatch, capsys):
    """Stopped before any fold trained (the hang above ended with Ctrl-C): no run folder is left that
    RESUME=1 would pick as the latest unfinished run."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("kagglecv.train.run.range_test", interrupted)
    assert main(["train", *TINY_SMALL[:4], "lr=auto", "device=cpu"]) == 130
    assert not list((digits_small / "runs" / "digits-small").iterdir())
    assert main(["train", "--comp", "digits-small", "--resume"]) == 2
    assert "nothing to resume for digits-small: there is no run yet" in cli_text(capsys)


def test_torchruns_traceback_after_a_user_error_is_held_back(capfd):
    """A rank that stops on a user error (exit 2) has said why; torchrun's ChildFailedError wall is dropped.
    Any other failure's traceback is shown."""
    from kagglecv.ml.dist import run_quiet_on_user_error

    wall = (  # as torch 2.x's torchrun writes it (rank 1 stopped by torchrun once rank 0 had exited)
        "import sys; print('W torchrun warning', file=sys.stderr); "
        "print('W1201 14:40:26.476000 27458 torch/distributed/elastic/multiprocessing/api.py:1028] "
        "Sending process 27569 closing signal SIGTERM', file=sys.stderr); "
        "print('Traceback (most recent call last):\\n  File x\\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\\n"
        "[1]:\\n  exitcode  : -15 (pid: 2)  (SIGTERM)\\nRoot Cause (first observed failure):\\n"
        "[0]:\\n  exitcode  : {code} (pid: 1)', file=sys.stderr); sys.exit(1)"
    )
    assert run_quiet_on_user_error([sys.executable, "-c", wall.format(code=2)], dict(os.environ)) == (
        1,
        True,
    )
    err = capfd.readouterr().err
    assert "W torchrun warning" in err and "Traceback" not in err and "SIGTERM" not in err
    assert run_quiet_on_user_error([sys.executable, "-c", wall.format(code=1)], dict(os.environ)) == (
        1,
        False,
    )
    assert "ChildFailedError" in capfd.readouterr().err


# ---- no network ------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess runs `kagglecv demo`: a whole training, ~20 s
def test_the_offline_demo_makes_no_network_call_and_prints_no_warning(tmp_path):
    """`kagglecv demo`, shrunk, in a network namespace with no interfaces: albumentations' version check
    (or anything else that phones home) would fail there, and say so in a warning."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("unshare -n (a network namespace) is not available here")
    for name in ("competitions", "configs"):
        shutil.copytree(REPO / name, tmp_path / name)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "KAGGLECV_NO_PROGRESS": "1"}
    env.pop("NO_ALBUMENTATIONS_UPDATE", None)
    shrunk = ["epochs=1", "train_folds=1", "lr=0.003", "workers=0", *FINISHED_RUN_ARGS]
    shrunk += ["img_size=16", "batch_size=128", "tta=false"]  # less to compute; the same imports and stages
    cmd = ["unshare", "-n", sys.executable, "-W", "default", "-m", "kagglecv", "demo", *shrunk]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "demo done" in text and "warn" not in text.lower(), text


def test_messages_name_the_real_competition_and_are_never_cut_mid_word(tmp_path, monkeypatch):
    """Two wording faults from the catalogue: the decode advice printed a literal `<slug>`, and the
    offline-weights message cut the library's text mid-word ("...try aga)")."""
    import timm

    from kagglecv.core.errors import UserError
    from kagglecv.ml import model as model_mod
    from kagglecv.ml.data import read_image

    bad = tmp_path / "data" / "my-comp" / "train" / "cat" / "x.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"COMP=my-comp FORCE=1"):
        read_image(bad, 32)

    long = "We couldn't connect to the hub to load this model, and it was not found in the cache. " * 3
    monkeypatch.setattr(model_mod, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(
        timm, "create_model", lambda *a, **k: (_ for _ in ()).throw(OSError(long + "Please try again"))
    )
    with pytest.raises(UserError) as e:
        model_mod.create_model("resnet18", num_classes=2, pretrained=True)
    said = str(e.value).split("(OSError: ", 1)[1].split(")", 1)[0]
    assert said.endswith(" …") and all(w in long for w in said[:-2].split())


def test_a_run_of_very_few_steps_trains_instead_of_dividing_by_zero(digits_small, capsys):
    """One optimizer step per fold (tiny data, a big batch, or several GPUs sharing it) left the
    one-cycle schedule a warm-up of zero steps, and PyTorch's OneCycleLR divided by zero."""
    from kagglecv.cli import main

    args = [
        "train",
        "-c",
        "digits-small",
        "--config",
        "configs/smoke.yaml",
        "device=cpu",
        "batch_size=40",
        "lr=0.003",  # the one-cycle schedule's peak: no LR range test, which is not what failed
        "train_folds=1",
    ]  # 4 steps
    assert main(args) == 0, cli_text(capsys)


def test_a_full_disk_while_training_is_one_line_and_leaves_no_half_checkpoint(
    digits_small, monkeypatch, capsys
):
    import errno

    from kagglecv.cli import main
    from kagglecv.core import runs

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{path}.123.tmp.pt")

    monkeypatch.setattr(runs, "atomic_write", full)
    args = ["train", "-c", "digits-small", "--config", "configs/smoke.yaml", "device=cpu", "lr=0.01"]
    assert main(args) == 2
    said = cli_text(capsys)
    assert "the disk is full" in said and "free in" in said
    left = {p.name for p in digits_small.glob("runs/digits-small/*/*")}
    assert not {n for n in left if n.endswith(".tmp.pt") or n in ("fold0.pt", "summary.json")}, left
    assert "fold0.last.pt" in left  # the last complete epoch's resume state: RESUME=1 continues from it
