"""kagglecv notebook: predicts the test set of COMPETITION with run RUN (both set below) and writes
submission.csv.

Written by `make kernel` (kagglecv); runs on Kaggle with no internet. It installs the kagglecv wheel
(and any other wheel listed below) from its dataset with `pip install --no-index`, then kagglecv's
notebook module lays out the competition's test set, predicts it with the run's exported fold
models and writes submission.csv exactly as `make submit` writes it.

Paths come from the environment where set (the local dry run sets them), else Kaggle's own:
KAGGLECV_INPUT (/kaggle/input), KAGGLECV_WORKING (/kaggle/working), KAGGLECV_SCRATCH (a temp folder),
KAGGLECV_PIP_TARGET (unset: pip installs into the notebook's Python).
"""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.time()
# `make kernel` fills these in, each a Python literal: a value is data here, never code
COMPETITION = "__COMP__"
RUN = "__RUN__"
WHEELS = "__WHEELS__"  # the kagglecv wheel first, then any the Kaggle image lacks
INPUT = Path(os.environ.get("KAGGLECV_INPUT") or "/kaggle/input")
WORKING = Path(os.environ.get("KAGGLECV_WORKING") or "/kaggle/working")


def no_network():
    """The dry run's stand-in for Kaggle's disabled internet: any connection attempt fails."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("no network in a Kaggle code-competition notebook (kagglecv dry run)")

    socket.socket.connect = refuse
    socket.create_connection = refuse


def dataset_folder():
    """The attached dataset of this run: the folder under INPUT whose kernel.json names RUN."""
    import json

    found = []
    for depth in ("*", "*/*", "*/*/*"):
        for spec in sorted(INPUT.glob(depth + "/kernel.json")):
            found.append(spec.parent)
            if json.loads(spec.read_text()).get("run") == RUN:
                return spec.parent
    raise SystemExit(
        f"no dataset with kernel.json for run {RUN} under {INPUT} (found: {found}); "
        "attach the dataset `make kernel` pushed"
    )


def install(folder):
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet"]
    cmd += ["--disable-pip-version-check", "--find-links", str(folder)]
    target = os.environ.get("KAGGLECV_PIP_TARGET")
    if target:
        cmd += ["--target", target]
        sys.path.insert(0, target)
    subprocess.run(cmd + [str(folder / w) for w in WHEELS], check=True)
    importlib.invalidate_caches()  # site-packages was listed before the install: look again


if os.environ.get("KAGGLECV_NO_NETWORK"):
    no_network()
DATASET = dataset_folder()
install(DATASET)

from kagglecv.ship.notebook import main  # noqa: E402  (installed just above)

main(INPUT, WORKING, DATASET, started=STARTED)
