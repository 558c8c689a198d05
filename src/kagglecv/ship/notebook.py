"""What a kagglecv Kaggle notebook runs (`make kernel` writes the notebook; this module is in the
kagglecv wheel the notebook installs from its dataset, with no internet).

    from kagglecv.ship.notebook import main
    main(Path("/kaggle/input"), Path("/kaggle/working"), dataset_folder)   # -> /kaggle/working/submission.csv

The dataset folder holds the export (model.json + fold<k>.safetensors) and kernel.json (the
competition's YAML, the run's class counts and post-processing, how it predicts). The competition's
files are found under /kaggle/input (unpacked or as archives: only what the test set needs is
unpacked, into a scratch folder, never into /kaggle/working), the test set is laid out as `make data`
lays it out, and the submission is made by compete/submit.py's own functions (order of ids, class prior for
unreadable images, post-processing, format, checks), so it is the file `make submit` writes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from kagglecv.core.competition import Competition, parse_competition
from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.ship.kernel_spec import KERNEL_JSON, KernelSpec

TIMING_TAG = "KAGGLECV_TIMING"  # the line the dry run reads the notebook's timings from


def load_kernel_spec(dataset: Path) -> tuple[KernelSpec, Competition]:
    path = dataset / KERNEL_JSON
    try:
        spec = KernelSpec.from_json(json.loads(path.read_text()))
    except ValueError as e:
        raise UserError(f"{path} is damaged ({e}): rebuild the dataset with `make kernel FORCE=1`") from None
    comp = parse_competition(spec.competition, Path(f"{spec.competition.get('slug')}.yaml"))
    return spec, comp


def find_competition_input(input_root: Path, kaggle_slug: str, sample_name: str) -> Path:
    """The competition's files under /kaggle/input: <slug>/, competitions/<slug>/, or any folder
    named so (Kaggle has moved its mounts before), else the one folder holding the sample submission."""
    for candidate in (input_root / kaggle_slug, input_root / "competitions" / kaggle_slug):
        if candidate.is_dir():
            return candidate
    named = sorted(p for p in input_root.glob("**/" + kaggle_slug) if p.is_dir())
    if named:
        return named[0]
    holders = sorted({p.parent for p in input_root.glob(f"*/{sample_name}")})
    if len(holders) == 1:
        return holders[0]
    found = ", ".join(sorted(p.name for p in input_root.iterdir())) if input_root.is_dir() else "nothing"
    raise UserError(
        f"the competition's files ({kaggle_slug}) are not under {input_root}/ (it holds: {found}); "
        "add the competition as the notebook's input"
    )


def raw_view(comp: Competition, source: Path, raw: Path) -> Path:
    """`source` when it needs no unpacking; else `raw`: every entry of `source` linked, and the
    archives the test set needs unpacked beside them as `make data` unpacks them."""
    from kagglecv.prepare.sources.archives import extract_nested, inner_dest, kind, stem

    opts = comp.layout_options
    skip = {getattr(opts, "train_dir", None), Path(getattr(opts, "train_csv", "") or "-").stem}
    skip.discard(getattr(opts, "test_dir", None))
    archives = [p for p in sorted(source.iterdir()) if kind(p) and not (source / stem(p)).exists()]
    if not archives:
        return source
    raw.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if not kind(entry) and not (raw / entry.name).exists():
            (raw / entry.name).symlink_to(entry.resolve())
    for archive in archives:
        if stem(archive) in skip:
            continue  # the training images: the notebook only predicts
        dest = raw if inner_dest(archive) == archive.parent else raw / stem(archive)
        console.print(f"unpacking {archive.name}")
        extract_nested(archive, dest)
    return raw


def lay_out_test(comp: Competition, raw: Path) -> None:
    """data/<comp>/test/ and sample_submission.csv as `make data` writes them (images linked, not
    copied; pixel rows of a CSV written as PNGs)."""
    import shutil

    import pandas as pd

    from kagglecv.core.images import IMAGE_EXTS
    from kagglecv.prepare.label_layouts import flat_name, pixel_rows_to_pngs, scored_test_images

    out, opts = comp.data_dir, comp.layout_options
    test = out / "test"
    test.mkdir(parents=True)
    shutil.copyfile(raw / opts.sample_submission, out / "sample_submission.csv")
    if opts.kind == "csv_pixels":
        frame = pd.read_csv(raw / opts.test_csv)
        paths = [test / f"{i + opts.id_start}.png" for i in range(len(frame))]
        pixel_rows_to_pngs(frame, list(frame.columns), paths, "test images")
        return
    folder = (raw / opts.test_dir).resolve()
    if not folder.is_dir():
        raise UserError(f"{raw / opts.test_dir} is missing (layout.test_dir of {comp.slug})")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if folder == (raw / opts.train_dir).resolve():  # one folder for train and test (plant-pathology)
        images = scored_test_images(comp, out / "sample_submission.csv", images)
    for src in images:
        wanted = dst = test / flat_name(src.relative_to(folder))
        n = 1
        while dst.exists() or dst.is_symlink():
            n += 1
            dst = wanted.with_name(f"{wanted.stem}~{n}{wanted.suffix}")
        dst.symlink_to(src)


def submission_frame(comp: Competition, spec: KernelSpec, probs: np.ndarray, classes: list[str], sample):
    """submit.py's own steps after prediction: post-processing, class prior for unreadable rows,
    the format, the checks."""
    from kagglecv.compete.submit import (
        check_classes,
        class_prior,
        fill_unreadable,
        format_submission,
        validate_submission,
    )
    from kagglecv.predict.postprocess import apply_postprocess

    check_classes(comp, sample, classes)
    ok = ~np.isnan(probs).any(1)
    probs[ok] = apply_postprocess(spec.postprocess, probs[ok])
    prior = class_prior(comp, spec.train_counts, classes)
    probs, _ = fill_unreadable(probs, prior, sample[comp.submission.id_column])
    df = format_submission(comp, sample, probs, classes)
    validate_submission(df, sample, comp, classes)
    return df


def imported_packages() -> list[str]:
    """Top-level packages outside the standard library this process imported (what the Kaggle
    image must have, or the dataset must bring as wheels)."""
    import sys

    names = {m.split(".")[0] for m in sys.modules}
    return sorted(
        n for n in names - set(sys.stdlib_module_names) if not n.startswith("_") and n != "kagglecv"
    )


def main(input_root: Path, working: Path, dataset: Path, started: float | None = None) -> Path:
    """The notebook's work: test set -> working/submission.csv; prints its timings on one line."""
    from kagglecv.compete.submit import read_sample, test_images
    from kagglecv.ml.engine import pick_device
    from kagglecv.predict.ensemble import Ensemble

    t0 = started or time.time()
    spec, comp = load_kernel_spec(dataset)
    kaggle_slug = comp.source.get("competition", comp.slug)
    source = find_competition_input(input_root, kaggle_slug, comp.layout_options.sample_submission)
    scratch = Path(os.environ.get("KAGGLECV_SCRATCH") or tempfile.mkdtemp(prefix="kagglecv-"))
    scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(scratch)  # data/<comp>/ is relative: the test set is laid out here, not in working/
    raw = raw_view(comp, source, scratch / "raw")
    lay_out_test(comp, raw)
    t_data = time.time()
    device = pick_device(spec.predict.device)
    ens = Ensemble.from_export(dataset, device, amp=spec.predict.amp, amp_dtype=spec.predict.amp_dtype)
    sample = read_sample(comp)
    paths = test_images(comp, sample)  # none known unreadable: predict_files gives those NaN rows
    probs, _ = ens.predict_files(paths)  # the views make submit averages
    t_pred = time.time()
    df = submission_frame(comp, spec, probs, ens.classes, sample)
    working.mkdir(parents=True, exist_ok=True)
    out = working / "submission.csv"
    out.write_text(df.to_csv(index=False))
    timing = {
        "images": len(paths),
        "device": device.type,
        "setup_s": round(t_data - t0, 3),
        "predict_s": round(t_pred - t_data, 3),
        "total_s": round(time.time() - t0, 3),
        "modules": imported_packages(),
        "kagglecv": str(Path(__file__).resolve().parents[1]),
    }
    print(f"{TIMING_TAG} {json.dumps(timing)}", flush=True)
    console.print(f"[green]✓[/] wrote {out} ({len(df)} rows) in {timing['total_s']:.1f} s on {device.type}")
    return out
