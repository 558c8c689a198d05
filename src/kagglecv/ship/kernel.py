"""Kaggle code competitions: a notebook that predicts the test set with no internet, run here first.

    kagglecv kernel [-c ..] [-r ..] [--push] [--force]    # make kernel [COMP=..] [RUN=..] [PUSH=1] [FORCE=1]
    kagglecv submit --kernel [-m ..]                      # make submit KERNEL=1: the pushed version

kernels/<comp>-<run>/            one folder per run, built once (FORCE=1 rebuilds it)
    dataset/    the Kaggle dataset: the export's weights + model.json + predict.py, kernel.json (the
                competition, class counts, post-processing), the kagglecv wheel, dataset-metadata.json
    notebook/   kagglecv-notebook.py + kernel-metadata.json (no internet, GPU from the recipe)
    dryrun/     the last local dry run: input/<competition>, input/<dataset>, working/submission.csv
    output/     after --push: what the Kaggle run wrote (submission.csv and its log)
    push.json   after --push: the dataset, the notebook and its version, how the run ended

The dry run always comes first: the notebook is executed here, by a fresh Python with the network
refused, in a folder laid out like /kaggle/input and /kaggle/working; its submission.csv must equal
the one `make submit` writes for the run (ids and order exactly, values within VALUE_TOLERANCE), and
its wall time is shown against the competition's notebook limit (submission.notebook_minutes). A
dry run that fails shows the traceback's last lines and nothing is pushed. kernel_push.py talks to Kaggle;
kernel_dataset.py says what the dataset and the notebook hold. One `make kernel` of a run at a time
(an flock on kernels/.<comp>-<run>.lock), and a kernel folder or an export of another run of the same
name is never taken for this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.markup import escape

from kagglecv.core.competition import Competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import human_bytes, replace_dir
from kagglecv.core.locks import hold
from kagglecv.ship.kernel_dataset import offline_username, write_dataset, write_notebook
from kagglecv.ship.kernel_folder import NOTEBOOK_FILE, compare_submissions, kernel_dir

LOG_TAIL = 15  # lines of a failed run's log shown
# kagglecv's dependencies that Kaggle's Python image lacks: a notebook that imports one is refused
NOT_ON_KAGGLE_IMAGE = {"ddgs", "imagehash", "py7zr", "cleanlab", "pytorch_grad_cam"}


# --- the folder: dataset + notebook -----------------------------------------------------------------


def check_run(run_dir: Path) -> None:
    from kagglecv.core.run_files import is_blend
    from kagglecv.core.runs import finished_folds

    if is_blend(run_dir):
        raise UserError(f"{run_dir.name} is a blend: a notebook predicts with one run (RUN=<a member>)")
    if not finished_folds(run_dir):
        raise UserError(
            f"run {run_dir.name} has no finished fold: train it first (`make train RESUME=1 RUN={run_dir.name}`)"
        )


def build(comp: Competition, run_dir: Path, out: Path) -> None:
    """out/dataset and out/notebook, written in a hidden folder renamed at the end (an existing
    kernel folder is complete). The run's export is reused only when it is this run's (model.json's
    fingerprint: the same fold checkpoints); another one is left as it is and the run exported afresh."""
    from kagglecv.ship.export import export_belongs, export_dir, export_run

    export: Path | None = export_dir(comp, run_dir)
    if export.is_dir() and export_belongs(export, run_dir):
        console.print(f"using the export {escape(str(export))}/ (FORCE=1 on `make export` redoes it)")
    elif export.is_dir():
        console.print(
            f"[yellow]note:[/] {escape(str(export))}/ is not an export of this run {escape(run_dir.name)} (another "
            "run of that name, or an older kagglecv): it is left as it is, and the run is exported afresh"
        )
        export = None
    else:
        export = export_run(comp, run_dir)

    def write(tmp: Path) -> None:
        user = offline_username()
        fresh = export or export_run(comp, run_dir, out_dir=tmp / "export")
        spec = write_dataset(comp, run_dir, fresh, tmp / "dataset", user)
        if export is None:
            shutil.rmtree(fresh)  # its files are in dataset/ (linked): no second copy
        dataset_id = json.loads((tmp / "dataset" / "dataset-metadata.json").read_text())["id"]
        write_notebook(comp, spec, tmp / "notebook", dataset_id, user)

    replace_dir(out, write)  # FORCE: the old folder goes once the new one is complete
    size = sum(p.stat().st_size for p in (out / "dataset").iterdir())
    console.print(
        f"[green]✓[/] wrote {escape(str(out))}/ (dataset {human_bytes(size)}, notebook {NOTEBOOK_FILE})"
    )


def kernel_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """kernels/<comp>-<run>/ to one `make kernel` at a time: two would build and dry-run one folder.
    The lock file lies beside the folder (kernels/.<comp>-<run>.lock), so it outlives a rebuild."""
    busy = f"{out}/ is in use: another `make kernel` of this run is building, dry-running or pushing it"
    return hold(out.parent / f".{out.name}.lock", True, "make kernel", busy)


# --- the dry run ------------------------------------------------------------------------------------


def dry_run_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE", "PYTHONPATH"))}
    env.update(
        KAGGLECV_INPUT=str(root / "input"),
        KAGGLECV_WORKING=str(root / "working"),
        KAGGLECV_SCRATCH=str(root / "scratch"),
        KAGGLECV_PIP_TARGET=str(root / "site"),
        KAGGLECV_NO_NETWORK="1",
        KAGGLECV_NO_PROGRESS="1",
        PYTHONNOUSERSITE="1",
    )
    return env


def lay_out_dry_run(comp: Competition, out: Path) -> Path:
    """out/dryrun/: input/<competition> (the raw files `make data` fetched), input/<dataset>,
    working/, all fresh."""
    root = out / "dryrun"
    shutil.rmtree(root, ignore_errors=True)
    (root / "input").mkdir(parents=True)
    (root / "working").mkdir()
    raw = comp.data_dir / "raw"
    if not raw.is_dir():
        raise UserError(f"{raw}/ is missing: the dry run reads the competition's raw files; run `make data`")
    (root / "input" / comp.source.get("competition", comp.slug)).symlink_to(raw.resolve())
    dataset = json.loads((out / "dataset" / "dataset-metadata.json").read_text())["id"].split("/")[1]
    (root / "input" / dataset).symlink_to((out / "dataset").resolve())
    return root


def dry_run(comp: Competition, out: Path) -> dict:
    """Execute the notebook here as Kaggle would; returns its timings (seconds, images, modules)."""
    root = lay_out_dry_run(comp, out)
    limit = comp.submission.notebook_minutes * 60
    console.print(f"dry run of {NOTEBOOK_FILE} (no network, {escape(str(root))}/ as /kaggle) ...")
    t0 = time.time()
    try:
        done = subprocess.run(
            [sys.executable, str((out / "notebook" / NOTEBOOK_FILE).resolve())],
            cwd=root / "working",
            env=dry_run_env(root.resolve()),
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"the dry run ran past the competition's notebook limit ({comp.submission.notebook_minutes} min) "
            "and was stopped: nothing was pushed"
        ) from None
    wall = time.time() - t0
    log = done.stdout + done.stderr
    (root / "notebook.log").write_text(log)
    if done.returncode:
        tail = "\n".join(log.strip().splitlines()[-LOG_TAIL:])
        raise UserError(
            f"the notebook failed its dry run (exit {done.returncode}); nothing was pushed. "
            f"The log's last lines ({root / 'notebook.log'} has it all):\n{tail}"
        )
    from kagglecv.ship.notebook import TIMING_TAG

    timing = next(
        (json.loads(line.split(" ", 1)[1]) for line in log.splitlines() if line.startswith(TIMING_TAG)), {}
    )
    if not (root / "working" / "submission.csv").exists():
        raise UserError(f"the dry run wrote no submission.csv in {root / 'working'}/; nothing was pushed")
    site = str((root / "site").resolve())
    if not str(timing.get("kagglecv", "")).startswith(site):
        raise UserError(f"the dry run imported kagglecv from {timing.get('kagglecv')}, not from its wheel")
    return {**timing, "wall_s": wall, "limit_s": limit}


def check_modules(timing: dict) -> None:
    """The notebook may import only those of kagglecv's dependencies that Kaggle's image has."""
    lacking = sorted(set(timing.get("modules", [])) & NOT_ON_KAGGLE_IMAGE)
    if lacking:
        raise UserError(
            f"the notebook imported {', '.join(lacking)}, which Kaggle's image lacks: nothing was pushed. "
            "Put their wheels in kernel_dataset.EXTRA_WHEELS, or keep the import out of the notebook's path"
        )


def show_timing(comp: Competition, timing: dict) -> None:
    minutes, limit = timing["wall_s"] / 60, comp.submission.notebook_minutes
    n = timing.get("images", 0)
    per = timing.get("predict_s", 0) / max(n, 1)
    colour = "green" if minutes <= limit else "red"
    console.print(
        f"dry run: [{colour}]{timing['wall_s']:.1f} s[/] wall ({minutes:.2f} of the {limit} min Kaggle allows), "
        f"{n} test images predicted in {timing.get('predict_s', 0):.1f} s ({per * 1000:.1f} ms/image on "
        f"{timing.get('device', '?')}), setup {timing.get('setup_s', 0):.1f} s"
    )
    if minutes > limit:
        console.print(
            "[red]the dry run took longer than Kaggle's limit[/]: a Kaggle GPU may be faster, but "
            "a run over the limit fails there"
        )


def make_kernel(comp: Competition, run: str | None, *, push: bool = False, force: bool = False) -> Path:
    """kernels/<comp>-<run>/ built (or the existing one), dry-run, checked against `make submit`,
    and pushed to Kaggle with `push`; one `make kernel` of a run at a time."""
    from kagglecv.core.runs import find_run

    run_dir = find_run(comp.slug, run, blends=False)  # a blend has no models of its own
    check_run(run_dir)
    if push and comp.source_kind != "kaggle":
        raise UserError(
            f"{comp.slug} is not a Kaggle competition (source: {comp.source_kind}): nothing to push to"
        )
    out = kernel_dir(comp, run_dir)
    with kernel_lock(out):
        if out.is_dir() and not force:
            _check_built_from(out, run_dir)
            console.print(f"using {escape(str(out))}/ as built before (FORCE=1 rebuilds it)")
        else:
            build(comp, run_dir, out)
        return _check_and_push(comp, run_dir, out, push)


def _check_built_from(out: Path, run_dir: Path) -> None:
    """A kernel folder built from another run of the same name (or by an older kagglecv, with no
    fingerprint) is not this run's: say so rather than dry-run and push it."""
    from kagglecv.ship.export import made_from

    if (out / "dataset" / "model.json").exists() and not made_from(out / "dataset", run_dir):
        raise UserError(
            f"{out}/ was built from another run named {run_dir.name} (or by an older kagglecv): "
            f"`make kernel FORCE=1 RUN={run_dir.name}` rebuilds it for this run"
        )


def _check_and_push(comp: Competition, run_dir: Path, out: Path, push: bool) -> Path:
    """The dry run, its file against `make submit`'s, the timing; then the push when asked."""
    from kagglecv.compete.submit import submit

    timing = dry_run(comp, out)
    record = submit(comp, run_dir.name)
    try:
        worst = compare_submissions(out / "dryrun" / "working" / "submission.csv", Path(record["file"]), comp)
    except UserError as e:
        raise UserError(
            f"{e}: the notebook does not write `make submit`'s file; nothing was pushed"
        ) from None
    numeric = comp.submission.kind in ("probability", "class_probabilities")
    console.print(
        f"[green]✓[/] the notebook's submission.csv equals {escape(record['file'])} (ids and order exact, "
        + (f"values within {worst:.1e})" if numeric else "labels identical)")
    )
    show_timing(comp, timing)
    check_modules(timing)
    if push:
        from kagglecv.ship.kernel_push import push_kernel

        push_kernel(comp, out, record)
    elif comp.source_kind == "kaggle":
        console.print(f"not pushed; to run it on Kaggle: make kernel PUSH=1 RUN={escape(run_dir.name)}")
    return out
