"""Data-parallel training across processes (torchrun): one process per GPU, or CPU processes with gloo.

    make train GPUS=4                      # torchrun on this machine
    make train GPUS=8 TORCHRUN="--nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500"

Rank 0 alone logs and writes files; every rank validates the whole validation split itself, so all
ranks agree on the best epoch without exchanging predictions; the training loss is all-reduced.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import re
import shlex
import subprocess
import sys

import torch
import torch.distributed as dist

from kagglecv.core.console import console
from kagglecv.core.errors import UserError

TIMEOUT_MIN = 120


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> torch.device | None:
    """Join the process group torchrun describes in the environment (once); returns this rank's CUDA
    device, or None outside torchrun and for CPU ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        # ranks wait for rank 0's lr-find and for the image cache of a first run: allow them time
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=TIMEOUT_MIN))
        atexit.register(_leave)
        if not is_main():
            console.quiet = True  # rank 0 speaks for everyone
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return None


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if dist.is_initialized() else 0


def local_world_size() -> int:
    return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1) if dist.is_initialized() else 1


@contextlib.contextmanager
def local_main_first():
    """Each machine's first rank runs the block (e.g. builds the disk image cache) before the other
    ranks on it do, so they find the work done instead of racing it."""
    if dist.is_initialized() and local_rank() != 0:
        dist.barrier()
    yield
    if dist.is_initialized() and local_rank() == 0:
        dist.barrier()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_across_ranks(value: float) -> float:
    if not dist.is_initialized():
        return value
    # NCCL reduces only CUDA tensors; gloo only CPU ones
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def broadcast(value):
    """Rank 0's value, on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_or_none(step) -> None:
    """Run `step()` on every rank; if it raised a UserError on any rank, raise it on all of them
    (a lock refused to rank 0 must stop ranks 1..N-1 too, not leave them waiting at a barrier)."""
    error = None
    try:
        step()
    except UserError as e:
        error = str(e)
    if dist.is_initialized():
        errors: list[str | None] = [None] * world_size()
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e), None)
    if error:
        raise UserError(error)


# ---- the relaunch under torchrun --------------------------------------------------------------


def relaunch_train(
    n: int, *, comp: str, config: str, run: str, folds: str, resume: bool, overrides: list[str], cpu: bool
) -> None:
    """Re-run this `kagglecv train` command under torchrun with n processes per node. The caller has
    checked everything that can fail first; a rank that still stops on a user error has said why in
    one line, so torchrun's own traceback is kept out of it."""
    # spelled so torchrun's own parser takes none of them for its options (--run would match --run-path)
    argv = ["train", f"--comp={comp}", f"--config={config}", f"--run-name={run}"]
    argv += [f"--folds={folds}"] * bool(folds) + ["--resume"] * resume + list(overrides)
    rc, user_error = launch(n, argv, cpu=cpu)
    if user_error:
        raise UserError("distributed training stopped on the error above")
    if rc:
        raise UserError(f"distributed training failed (exit code {rc}); see the messages above")


def launch(n: int, argv: list[str], cpu: bool = False) -> tuple[int, bool]:
    """Re-run this `kagglecv train` command under torchrun with n processes per node (CPU processes
    with gloo where `cpu` is asked for or no GPU is visible)."""
    env = dict(os.environ)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the ranks see no GPU, so they join with gloo on the CPU
    elif n > 1 and torch.cuda.is_available() and torch.cuda.device_count() < n:
        raise UserError(
            f"GPUS={n} but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
            "use fewer, or device=cpu for CPU processes"
        )
    else:
        say_no_gpu(n, "processes (DDP with gloo)")
    extra = shlex.split(os.environ.get("TORCHRUN", ""))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n),
        *extra,
        "-m",
        "kagglecv",
        *argv,
    ]
    console.print(
        f"launching {n} processes: torchrun --nproc_per_node {n} {' '.join(extra)} kagglecv {' '.join(argv)}",
        soft_wrap=True,
    )
    return run_quiet_on_user_error(cmd, env)


def run_quiet_on_user_error(cmd: list[str], env: dict) -> tuple[int, bool]:
    """Run torchrun, passing its stderr through, but hold back torchrun's own reports (its log lines
    and tracebacks): after ranks that stopped on a user error (exit code 2, the line already printed;
    the other ranks then get SIGTERM) they are dropped; after any other failure they are shown.
    Returns (exit code, stopped on a user error)."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    held: list[str] = []
    for line in proc.stderr:
        if held or ELASTIC_LOG.match(line) or line.startswith("Traceback (most recent call last)"):
            held.append(line)
        else:
            sys.stderr.write(line)
    rc = proc.wait()
    text = "".join(held)
    codes = set(re.findall(r"exitcode\s*:\s*(-?\d+)", text))
    # torchrun stops the other ranks with SIGTERM (-15) once one has exited
    user_error = rc != 0 and "ChildFailedError" in text and "2" in codes and codes <= {"2", "-15"}
    if not user_error:
        sys.stderr.write(text)
    return rc, user_error


def say_no_gpu(n: int, what: str) -> None:
    """GPUS=n on a machine without CUDA trains anyway, on the CPU (how the tests run it): one line
    says so, so that nobody takes it for n GPUs. device=cpu asks for it and goes without the line."""
    if n > 1 and not torch.cuda.is_available():
        console.print(
            f"[yellow]note:[/] no CUDA GPU here, so GPUS={n} runs {n} CPU {what}; "
            "device=cpu to ask for that, GPUS=1 for one process",
            soft_wrap=True,
        )


FOLD_WORKER = "KAGGLECV_FOLD_WORKER"  # set in PARALLEL=folds workers: finding no fold left is no error


def launch_fold_workers(n: int, argv: list[str], cpu: bool) -> list[int]:
    """PARALLEL=folds: n independent `kagglecv train` processes on one named run, one per GPU (each
    sees only its own) or, on the CPU, each with its share of the cores. No process group and no
    gradient sync: they claim the run's folds one by one (train/run.py) and the last to finish gathers.
    Returns their exit codes."""
    env = dict(os.environ)
    gpus = 0 if cpu else torch.cuda.device_count()
    if not cpu and gpus and gpus < n:
        raise UserError(f"GPUS={n} but only {gpus} CUDA GPU(s) are visible; use fewer, or device=cpu")
    if not cpu:
        say_no_gpu(n, "fold workers, each with a share of the cores")
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = []
    console.print(f"launching {n} fold workers: kagglecv {' '.join(argv)}", soft_wrap=True)
    for i in range(n):
        env_i = {**env, "KAGGLECV_NO_PROGRESS": "1", FOLD_WORKER: "1"}
        if gpus:
            env_i["CUDA_VISIBLE_DEVICES"] = str(i)
        else:  # CPU workers: split the cores instead of each taking them all
            env_i.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        procs.append(subprocess.Popen([sys.executable, "-m", "kagglecv", *argv], env=env_i))
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too (same process group); let them stop
        for p in procs:
            p.wait()
        raise


# torchrun's own log lines, e.g. "W1201 14:40:26.476000 27458 torch/distributed/elastic/...: Sending process ..."
ELASTIC_LOG = re.compile(r"^[WEI]\d{4} .*torch/distributed/elastic/")
