"""Take a finished run anywhere: exports/<comp>-<run>/ holds everything needed to predict without
kagglecv installed.

    kagglecv export [--comp ..] [--run ..] [--force]        # make export [COMP=..] [RUN=..] [FORCE=1]

    fold<k>.safetensors   each fold's weights (tensors only, nothing pickled)
    model.json            timm model name, classes, input size, mean/std, TTA flips, the submission format
    predict.py            a standalone script (torch, timm, numpy, Pillow): a folder of images -> CSV
    model.onnx            all folds in one graph: pixels (N x 3 x H x W, 0..255) -> mean softmax

model.json also lists the export's own files and the run's fingerprint (each fold checkpoint's
sha256): `make kernel` uploads only those files, and only from an export of this very run.

The ONNX model is checked against PyTorch with onnxruntime on real images of the competition before
the folder counts as written; everything is written into a hidden temporary folder and renamed at
the end, so an export folder that exists is complete. An existing one is replaced only with force,
and only when export wrote it (its model.json, and nothing but the files that lists): a folder of
the user's, a run folder, a file or the project itself given as --out is refused, never replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np
from rich.markup import escape

from kagglecv.core.console import console
from kagglecv.core.errors import UserError
from kagglecv.core.files import human_bytes, replace_dir
from kagglecv.core.images import IMAGE_EXTS
from kagglecv.predict.ensemble import Ensemble, load_image
from kagglecv.predict.new_images import load_ensemble

EXPORTS_DIR = Path("exports")
PARITY_TOLERANCE = 1e-4  # max |Δprob| between onnxruntime and PyTorch
PARITY_IMAGES = 16  # real images the ONNX model is checked on (at least MIN_PARITY_IMAGES)
MIN_PARITY_IMAGES = 8
ONNX_INPUT, ONNX_OUTPUT = "pixels", "probs"
MODEL_JSON = "model.json"


def export_dir(comp, run_dir: Path) -> Path:
    return EXPORTS_DIR / f"{comp.slug}-{run_dir.name}"


def _ensemble_module(ens: Ensemble):
    """The fold models as one torch module: float pixels 0..255 -> the folds' mean softmax (each
    averaged over the TTA flips), so an ONNX consumer needs nothing but the resize."""
    import torch

    from kagglecv.ml.engine import FLIP_DIMS

    class FoldEnsemble(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.folds = torch.nn.ModuleList(ens.models)
            self.register_buffer("mean", torch.tensor(ens.meta.mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(ens.meta.std).view(1, -1, 1, 1))
            self.flips = list(ens.flips)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels / 255.0 - self.mean) / self.std
            views = [x] + [torch.flip(x, dims=FLIP_DIMS[f]) for f in self.flips]
            total = 0
            for model in self.folds:
                p = 0
                for view in views:
                    p = p + model(view).float().softmax(1)
                total = total + p / len(views)
            return total / len(self.folds)

    return FoldEnsemble().eval()


def model_spec(comp, ens: Ensemble, weights: list[str]) -> dict:
    meta = ens.meta
    return {
        "format": 1,
        "competition": comp.slug,
        "run": ens.run_dir.name if ens.run_dir else "",
        "model": meta.model,
        "num_classes": meta.num_classes,
        "in_chans": meta.in_chans,
        "classes": ens.classes,
        "img_size": ens.img_size,
        "resize": "squash to img_size x img_size: area average when both sides are larger, else bilinear (OpenCV)",
        "mean": list(meta.mean),
        "std": list(meta.std),
        "tta": list(ens.flips),
        "tta_scales_in_submit": list(ens.scales),  # submit may add a larger-scale view; the export does not
        "folds": list(ens.folds),
        "metric": comp.metric,
        "weights": weights,
        "onnx": {
            "file": "model.onnx",
            "input": f"{ONNX_INPUT}: float32 N x {meta.in_chans} x {ens.img_size} x {ens.img_size}, RGB 0..255",
            "output": f"{ONNX_OUTPUT}: float32 N x {meta.num_classes}, the folds' mean softmax "
            "(TTA inside; postprocess below not applied)",
        },
        # temperature T / clip eps chosen on the run's OOF (log-loss competitions), as make submit applies it
        "postprocess": {k: v for k, v in ens.postprocess.items() if k in ("kind", "T", "eps")},
        "submission": dataclasses.asdict(comp.submission),
    }


def write_weights(ens: Ensemble, folder: Path) -> list[str]:
    from safetensors.torch import save_file

    names = []
    for fold, model in zip(ens.folds, ens.models, strict=True):
        name = f"fold{fold}.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / name), metadata={"fold": str(fold), "model": ens.meta.model})
        names.append(name)
    return names


def write_onnx(ens: Ensemble, path: Path) -> None:
    import warnings

    import torch

    net = _ensemble_module(ens)
    example = torch.zeros(2, ens.meta.in_chans, ens.img_size, ens.img_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            _onnx_export(net, example, path)
        except (RuntimeError, ValueError, TypeError) as e:  # an operator ONNX lacks, a graph over 2 GB
            said = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(
                f"{ens.meta.model} does not export to ONNX ({type(e).__name__}: {said}); nothing was exported"
            ) from None


def _onnx_export(net, example, path: Path) -> None:
    import torch

    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT],
        dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def parity_images(comp, size: int) -> tuple[list[Path], np.ndarray]:
    """Up to PARITY_IMAGES real images of the competition (test/, else train/), decoded as
    `kagglecv predict` decodes them."""
    found: list[Path] = []
    for sub in ("test", "train"):
        root = comp.data_dir / sub
        if root.is_dir():
            found += sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)[:PARITY_IMAGES]
        if len(found) >= PARITY_IMAGES:
            break
    loaded = [(p, load_image(p, size)) for p in found]
    good = [(p, img) for p, img in loaded if not isinstance(img, str)][:PARITY_IMAGES]
    if len(good) < MIN_PARITY_IMAGES:
        raise UserError(
            f"the ONNX check needs {MIN_PARITY_IMAGES} readable images in {comp.data_dir}/test or train, "
            f"found {len(good)}: run `make data COMP={comp.slug}` first"
        )
    return [p for p, _ in good], np.stack([img for _, img in good])


def onnx_parity(ens: Ensemble, onnx_path: Path, images: np.ndarray) -> float:
    """max |Δprob| between onnxruntime and the inference core's own prediction of `images` (the
    ensemble in fp32, with its flips, before post-processing): the ONNX model answers as
    `kagglecv predict` does."""
    import onnxruntime as ort

    pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
    want = dataclasses.replace(ens, amp=False).predict_array(images)  # the graph is fp32
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: pixels})[0]
    return float(np.abs(got - want).max())


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"make export needs {e.name}: pip install -e '.[export]' (onnx and onnxruntime)"
        ) from None


def write_export(comp, ens: Ensemble, tmp: Path) -> float:
    """Everything into `tmp`, model.json last; returns the ONNX check's max |Δprob| (raising when it
    is too large)."""
    weights = write_weights(ens, tmp)
    template = resources.files("kagglecv.ship") / "templates" / "export_predict.py"
    (tmp / "predict.py").write_text(template.read_text())
    write_onnx(ens, tmp / "model.onnx")
    paths, images = parity_images(comp, ens.img_size)
    delta = onnx_parity(ens, tmp / "model.onnx", images)
    ok = delta <= PARITY_TOLERANCE
    console.print(
        f"{'[green]✓[/]' if ok else '[red]✗[/]'} ONNX vs PyTorch on {len(paths)} images of "
        f"{escape(str(comp.data_dir))}: max |Δprob| {delta:.2e} (limit {PARITY_TOLERANCE:.0e})"
    )
    if not ok:
        raise UserError(
            f"the ONNX model disagrees with PyTorch (max |Δprob| {delta:.2e} > {PARITY_TOLERANCE:.0e}); "
            "nothing was exported. An operator of this model may export badly: try another opset or model"
        )
    spec = model_spec(comp, ens, weights)
    spec["onnx"]["max_abs_diff_vs_torch"] = delta
    # what this export is: its own files (what `make kernel` uploads) and the run it was made from
    spec["files"] = [*weights, "predict.py", "model.onnx", MODEL_JSON]
    spec["fingerprint"] = run_fingerprint(ens.run_dir, ens.folds) if ens.run_dir else {}
    (tmp / MODEL_JSON).write_text(json.dumps(spec, indent=2))
    return delta


def run_fingerprint(run_dir: Path, folds) -> dict:
    """The run an export is made from: its name and each fold checkpoint's sha256, so that a later
    run of the same name (an old one deleted, a new one trained as RUN=exp1) is never taken for it."""
    import hashlib

    digests = {}
    for k in folds:
        h = hashlib.sha256()
        with open(run_dir / f"fold{k}.pt", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests[f"fold{k}.pt"] = h.hexdigest()
    return {"run": run_dir.name, "checkpoints": digests}


def _model_json(export: Path) -> dict:
    try:
        spec = json.loads((export / MODEL_JSON).read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"{export / MODEL_JSON} is unreadable ({type(e).__name__}): `make export FORCE=1` redoes it"
        ) from None
    if not isinstance(spec, dict):
        raise UserError(f"{export / MODEL_JSON} is damaged: `make export FORCE=1` redoes it")
    return spec


def listed_files(export: Path) -> list[str]:
    """The files export wrote in `export`, as its model.json lists them, each checked to be a plain
    file there (no link, no path): what may be copied on, e.g. into a Kaggle dataset. A folder whose
    model.json lists none (an older kagglecv) or names a missing or linked file is refused."""
    from kagglecv.core.names import is_plain_name

    names = _model_json(export).get("files")
    redo = "`make export FORCE=1` writes it again"
    if not isinstance(names, list) or not names:
        raise UserError(f"{export / MODEL_JSON} lists no files (written by an older kagglecv): {redo}")
    for name in names:
        p = export / str(name)
        if not is_plain_name(name) or p.is_symlink() or not p.is_file():
            raise UserError(f"{export}/ lacks {name!r} as a plain file, which its {MODEL_JSON} lists: {redo}")
    return names


def made_from(folder: Path, run_dir: Path) -> bool:
    """True when the model.json in `folder` (an export, or a kernel dataset holding one) was made
    from this run as it is now: the same fold checkpoints."""
    from kagglecv.core.runs import check_run, read_summary

    try:
        spec = _model_json(folder)
    except UserError:
        return False
    folds = check_run(run_dir, read_summary(run_dir))
    return spec.get("fingerprint") == run_fingerprint(run_dir, folds)


def export_belongs(export: Path, run_dir: Path) -> bool:
    """True when `export` lists its files and was made from this run: only then may it stand for it."""
    try:
        listed_files(export)
    except UserError:
        return False
    return made_from(export, run_dir)


def _readable(folder: Path) -> None:
    """safetensors writes its files 0600; an export is made to be copied and shared: the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.iterdir():
        p.chmod(0o666 & ~umask)


EXPORT_FILES = {"model.json", "predict.py", "model.onnx"}
WEIGHTS_NAME = re.compile(r"fold\d+\.safetensors")


def not_an_export(folder: Path) -> str | None:
    """Why `folder` is not one `kagglecv export` wrote (so nothing may replace it), None when it is:
    a real folder with an export's model.json, holding only the files that model.json lists."""
    if folder.is_symlink() or not folder.is_dir():
        return "it is a link" if folder.is_symlink() else "it is a file, not a folder"
    try:
        spec = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        spec = None
    weights = spec.get("weights") if isinstance(spec, dict) else None
    if not (isinstance(weights, list) and isinstance(spec, dict) and isinstance(spec.get("onnx"), dict)):
        return "it has no model.json of an export"
    ours = EXPORT_FILES | {w for w in weights if isinstance(w, str) and WEIGHTS_NAME.fullmatch(w)}
    other = sorted(
        p.name for p in folder.iterdir() if p.name not in ours or not p.is_file() or p.is_symlink()
    )
    return f"it holds {other[0]!r}, which export did not write" if other else None


def _check_out(out: Path, force: bool) -> None:
    """An existing `out` is replaced only with force and only when export wrote it."""
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise UserError(f"--out {out} is this folder or holds it; give a new folder, e.g. -o exports/mine")
    if not (out.exists() or out.is_symlink()):
        above = next(p for p in out.absolute().parents if p.exists())
        if not above.is_dir():
            raise UserError(f"--out {out}: {above} is a file, not a folder; give a folder that can be made")
        return
    why = not_an_export(out)
    if why is not None:
        raise UserError(
            f"{out} exists and is not an export ({why}); kagglecv export never replaces it: give "
            "--out (-o) a folder that does not exist yet"
        )
    if not force:
        raise UserError(f"{out}/ exists already: FORCE=1 (--force) replaces it, or export elsewhere")


def export_run(comp, run_dir: Path, *, out_dir: Path | None = None, force: bool = False) -> Path:
    """exports/<comp>-<run>/ (or `out_dir`) from a finished run; see the module docstring."""
    out = Path(out_dir) if out_dir else export_dir(comp, run_dir)
    _check_out(out, force)
    _need_onnx()
    ens = load_ensemble(comp, run_dir)  # on the CPU: what the export is checked on
    if any(s != 1.0 for s in ens.scales):
        console.print(
            "[yellow]note:[/] the OOF chose a larger-scale TTA view too; the export averages the flips "
            "at one size (one fixed-size ONNX graph), so it can differ slightly from `make submit`"
        )

    def build(tmp: Path) -> None:
        write_export(comp, ens, tmp)
        _readable(tmp)

    replace_dir(out, build)  # force: the old folder goes only once the new one is complete
    size = sum(p.stat().st_size for p in out.iterdir())
    console.print(
        f"[green]✓[/] exported {len(ens.models)} fold(s) of {escape(run_dir.name)} to {escape(str(out))}/ "
        f"({human_bytes(size)}): python {escape(str(out))}/predict.py <images> needs only torch, timm, numpy, Pillow"
    )
    return out
