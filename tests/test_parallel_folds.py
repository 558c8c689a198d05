"""Folds in parallel (issue 14): processes that train one RUN= claim its folds by themselves with
fold<k>.lock, a killed one lets go of its fold, RESUME picks it up, the last one gathers."""

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.cli import cli_text
from helpers.repo import REPO
from kagglecv.cli import main
from kagglecv.core import locks
from kagglecv.train.claims import SETUP_LOCK

TINY = ["--comp", "digits-small", "--config", "configs/smoke.yaml", "lr=0.003", "device=cpu"]

# `python -m kagglecv` that, once its first epoch's fold<k>.last.pt is saved, stays in the middle
# of its fold (as a slow trainer would) until it is killed
PAUSED_TRAINER = """
import sys, time
import kagglecv.train.one_fold as fold
real = fold.save_resume_state
def save_then_stay(*args, **kwargs):
    real(*args, **kwargs)
    time.sleep(600)
fold.save_resume_state = save_then_stay
from kagglecv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "KAGGLECV_NO_PROGRESS": "1",
        "OMP_NUM_THREADS": "1",
    }


def _pid_of(claim) -> int:
    return int(locks.holder(claim).split(":")[0].removeprefix("pid "))


def _waiters(path: Path) -> int:
    """How many processes wait for an flock on `path` (Linux lists them in /proc/locks as `->`)."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return sum(" -> FLOCK " in line and f":{ino} " in line for line in f)


@contextlib.contextmanager
def _held_until_waited_on(path: Path, n: int, timeout: float = 120.0):
    """Hold `path` (an flock) from now until `n` processes wait for it, then let go (from a thread) so
    they go on together; at once where there is no /proc/locks, after `timeout`, or when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()

    def let_go():
        deadline = time.time() + timeout
        try:
            while os.path.exists("/proc/locks") and _waiters(path) < n and time.time() < deadline:
                if done.wait(0.05):
                    break
        finally:
            os.close(fd)

    thread = threading.Thread(target=let_go, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.slow  # two fresh processes import torch and train: ~15 s alone, more on a busy machine
def test_parallel_folds_split_the_folds_between_processes_and_the_last_gathers(
    digits_small, monkeypatch, capsys
):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))
    run = digits_small / "runs" / "digits-small" / "par"
    # both workers wait at the run's setup lock (where a range test would run) until both are there, so
    # neither can finish a fold of digits-small before the other has started: they claim one each
    with _held_until_waited_on(run / SETUP_LOCK, 2):
        rc = main(["train", *TINY, "epochs=1", "--run", "par", "--gpus", "2", "--parallel", "folds"])
    text = cli_text(capsys)
    assert rc == 0 and "launching 2 fold workers" in text, text
    assert (run / "summary.json").exists() and "CV" in text  # gathered once both folds were done
    # each worker trained one fold: the claim files keep the pid of the process that held them
    pids = {_pid_of(run / f"fold{k}.lock") for k in (0, 1)}
    assert len(pids) == 2 and os.getpid() not in pids
    assert not locks.is_locked(run / ".lock")  # nobody trains it any more


@pytest.mark.slow
def test_a_killed_trainer_lets_go_of_its_fold_and_resume_picks_it_up(digits_small, capsys, monkeypatch):
    run = digits_small / "runs" / "digits-small" / "kill"
    trainer = ["train", *TINY, "train_folds=1", "epochs=2", "--run-name=kill"]
    cmd = [sys.executable, "-c", PAUSED_TRAINER, *trainer]
    proc = subprocess.Popen(
        cmd, cwd=digits_small, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while not (run / "fold0.last.pt").exists():  # mid-fold: after its first epoch
            assert proc.poll() is None and time.time() < deadline, "the trainer ended before its first epoch"
            time.sleep(0.1)
        assert locks.is_locked(run / "fold0.lock")  # held while it trains
        # a second trainer of the same run finds the only fold claimed: one line, nothing trained
        assert main(["train", "--comp", "digits-small", "--run", "kill", "--resume"]) == 2
        assert "run kill is already being trained (fold 0: pid" in cli_text(capsys)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not locks.is_locked(run / "fold0.lock")  # the kernel dropped the claim with the process
    monkeypatch.setattr("kagglecv.report.page.write_report", lambda *a, **k: None)  # figures: not the point
    assert main(["train", "--comp", "digits-small", "--run", "kill", "--resume"]) == 0
    text = cli_text(capsys)
    assert "resuming fold 0" in text and (run / "summary.json").exists()
    assert _pid_of(run / "fold0.lock") == os.getpid()


def test_a_trainer_takes_the_folds_nobody_holds(finished_run, capsys):
    """Fold 1 unfinished and held by another process: a resume leaves it alone, says so, gathers nothing."""
    (finished_run / "summary.json").unlink()
    for name in ("fold1.pt", "oof_fold1.csv"):
        (finished_run / name).unlink()
    with locks.claim(finished_run / "fold1.lock", "make train (elsewhere)") as mine:
        assert mine
        rc = main(["train", "--comp", "digits-demo", "--run", finished_run.name, "--resume"])
    text = cli_text(capsys)
    assert rc == 2 and f"fold 1: pid {os.getpid()}: make train (elsewhere)" in text
    assert not (finished_run / "fold1.pt").exists() and not (finished_run / "summary.json").exists()


def test_metrics_rows_of_other_folds_are_kept(tmp_path):
    """Two processes write metrics.csv for different folds: neither erases the other's rows."""
    from kagglecv.core.runs import read_rows, write_rows

    row = {"lr": 0.1, "train_loss": 1.0, "val_loss": 1.0, "metric": 0.5}
    write_rows(tmp_path, [{"fold": 0, "epoch": 0, **row}], fold=0)
    write_rows(tmp_path, [{"fold": 1, "epoch": 0, **row}, {"fold": 1, "epoch": 1, **row}], fold=1)
    write_rows(tmp_path, [{"fold": 0, "epoch": 0, **row}, {"fold": 0, "epoch": 1, **row}], fold=0)
    assert [(r["fold"], r["epoch"]) for r in read_rows(tmp_path)] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_data_lock_removed_by_its_holder_is_never_held_twice(tmp_path, monkeypatch):
    """make data removes data/.<comp>.lock when it leaves no data/<comp>/ (test_make_data_of_an_
    unknown_competition_leaves_no_lock_behind). A process that opened the file just before it went
    must not then hold a lock on a name-less file beside a newcomer holding the new one: it sees the
    name gone once it gets the lock, and takes the new file (or is refused as busy)."""
    data_dir = tmp_path / "data" / "comp"
    lock = tmp_path / "data" / ".comp.lock"
    with locks.data_lock(data_dir, exclusive=True, what="make data"):
        assert lock.is_file()
    assert not lock.exists()  # no data/comp/: nothing to guard
    data_dir.mkdir()
    with locks.data_lock(data_dir, exclusive=True, what="make data"):
        pass
    assert lock.is_file()  # a folder to guard: the file stays (readers may hold it open)

    real_flock, raced = fcntl.flock, []

    def flock_after_a_holder_removed_it(fd, op):  # the holder left and removed the file meanwhile
        if not raced:
            raced.append(fd)
            lock.unlink()
        return real_flock(fd, op)

    monkeypatch.setattr(locks.fcntl, "flock", flock_after_a_holder_removed_it)
    with locks.data_lock(data_dir, exclusive=False, what="make train"):
        assert lock.is_file() and len(raced) == 1
        monkeypatch.setattr(locks.fcntl, "flock", real_flock)
        with pytest.raises(locks.UserError, match="is being written by|is in use"):
            with locks.data_lock(data_dir, exclusive=True, what="make data"):
                pass


def test_gpus_2_without_cuda_says_it_runs_cpu_processes(monkeypatch, capsys):
    """`make train GPUS=2` on a machine without CUDA quietly started 2 CPU processes under torchrun;
    now one line says so (device=cpu asks for it without the line). torchrun and the workers
    themselves are not started here: what is launched is recorded instead."""
    from kagglecv.ml import dist

    monkeypatch.setattr(dist.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist.torch.cuda, "device_count", lambda: 0)
    started = []
    monkeypatch.setattr(dist, "run_quiet_on_user_error", lambda cmd, env: started.append(cmd) or (0, False))

    class Worker:
        def __init__(self, cmd, env):
            started.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(dist.subprocess, "Popen", Worker)
    note = "note: no CUDA GPU here, so GPUS=2 runs 2 CPU "
    assert dist.launch(2, ["train"]) == (0, False)
    assert note + "processes (DDP with gloo); device=cpu to ask for that" in cli_text(capsys)
    assert dist.launch_fold_workers(2, ["train"], cpu=False) == [0, 0]
    assert note + "fold workers" in cli_text(capsys)
    dist.launch(2, ["train"], cpu=True)
    dist.launch_fold_workers(2, ["train"], cpu=True)
    assert "no CUDA GPU" not in cli_text(capsys) and len(started) == 6
