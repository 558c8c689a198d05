"""The competitor's loop on digits-small (20 training images per digit, 1,597 labelled test digits):
three single runs, their blend, TTA chosen on OOF vs none, pseudo-labels vs none. Prints one table of
CV / OOF / holdout scores and the blend's timing; the README's figures come from here.

    .venv/bin/python scripts/bench_compete.py [--workdir /tmp/kcv-compete]

Runs in its own working folder (a copy of competitions/ and configs/), so the checkout's runs/ and
submissions/ are not touched. Everything goes through the `kagglecv` command as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMP = "digits-small"
RUNS = {  # name -> recipe overrides on configs/demo.yaml
    "a-seed42": [],
    "b-seed1": ["seed=1"],
    "c-24px": ["img_size=24", "seed=2"],
}


def kcv(*args: str) -> None:
    from kagglecv.cli import main

    code = main(list(args))
    if code != 0:
        raise SystemExit(f"kagglecv {' '.join(args)} exited {code}")


def record(run: str) -> dict:
    return json.loads(Path(f"submissions/{COMP}-{run}.json").read_text())


def summary(run: str) -> dict:
    return json.loads(Path(f"runs/{COMP}/{run}/summary.json").read_text())


def submit_both(run: str) -> dict:
    """Test scores without TTA and with the TTA chosen on OOF (the second submit is the one kept)."""
    kcv("submit", "-c", COMP, "-r", run, "--tta", "none")
    plain = record(run)["test_score"]
    kcv("submit", "-c", COMP, "-r", run)
    rec = record(run)
    return {"test_plain": plain, "test_tta": rec["test_score"], "tta": rec["tta"]["name"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/kcv-compete")
    args = p.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("competitions", "configs"):
        shutil.copytree(REPO / name, work / name)
    os.chdir(work)
    os.environ.setdefault("KAGGLECV_NO_PROGRESS", "1")
    kcv("data", "-c", COMP)
    rows = {}
    for run, overrides in RUNS.items():
        t0 = time.time()
        kcv("train", "-c", COMP, "--config", "configs/demo.yaml", "-r", run, *overrides)
        rows[run] = {**submit_both(run), "train_s": time.time() - t0}
    t0 = time.time()
    kcv("blend", "-c", COMP, "--runs", *RUNS)
    blend_s = time.time() - t0
    blend = next(p.name for p in Path(f"runs/{COMP}").iterdir() if p.name.startswith("blend-"))
    t0 = time.time()
    kcv("submit", "-c", COMP, "-r", blend)
    blend_submit_s = time.time() - t0
    rows[blend] = {"test_tta": record(blend)["test_score"], "tta": "members' own"}
    kcv(
        "train",
        "-c",
        COMP,
        "--config",
        "configs/demo.yaml",
        "-r",
        "d-pseudo",
        f"pseudo={blend}",
        "pseudo_threshold=0.7",
    )
    rows["d-pseudo"] = submit_both("d-pseudo")
    print(f"\n{'run':<22} {'CV':>16} {'OOF':>7} {'test plain':>10} {'test TTA':>9}  TTA chosen")
    for run, r in rows.items():
        s = summary(run)
        plain = f"{r['test_plain']:.4f}" if r.get("test_plain") is not None else ""
        print(
            f"{run:<22} {s['cv_mean']:.4f} ± {s['cv_std']:.4f} {s['oof_score']:.4f} {plain:>10} "
            f"{r['test_tta']:.4f}  {r['tta']}"
        )
    weights = dict(zip(summary(blend)["members"], summary(blend)["weights"], strict=True))
    pseudo = json.loads(Path(f"runs/{COMP}/d-pseudo/pseudo.json").read_text())
    print(f"blend weights: {weights}")
    print(f"make blend over 3 runs: {blend_s:.1f} s (OOF only, nothing trained or predicted)")
    print(f"submit of the blend: {blend_submit_s:.1f} s (members' test predictions read from their caches)")
    print(f"pseudo-labels: {pseudo['added']} of {pseudo['of']} test images at p >= {pseudo['threshold']}")


if __name__ == "__main__":
    main()
