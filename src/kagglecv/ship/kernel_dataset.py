"""What `make kernel` puts in a run's Kaggle dataset and notebook (kernel.py builds the folder, runs
it here and pushes it):

    write_dataset(comp, run_dir, export, folder, user)   # the export's own files, kernel.json, the wheel
    write_notebook(comp, spec, folder, dataset_id, user) # the template, its values filled in as data

Only what was meant goes to Kaggle: the files the export lists in its model.json (never whatever
else lies in the folder, hidden or linked), and a kagglecv wheel built from the files git tracks
(never an untracked file of the checkout). Every value pasted into the notebook is a Python literal
(repr), so a run id or slug, whatever quotes it holds, stays data and never becomes code.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from kagglecv.core.competition import Competition
from kagglecv.core.config import read_yaml
from kagglecv.core.errors import UserError
from kagglecv.core.files import link_or_copy
from kagglecv.ship.kernel_folder import NOTEBOOK_FILE, short_slug
from kagglecv.ship.kernel_spec import KERNEL_JSON, KernelPredict, KernelSpec

# Wheels the notebook installs besides kagglecv, for packages Kaggle's Python image lacks. The
# notebook's path imports only kagglecv dependencies the image has (torch, torchvision, timm,
# albumentations, cv2, sklearn, scipy, pandas, numpy, PIL, rich, yaml, safetensors), so: none. The
# dry run refuses a notebook that imported one of the others (kernel.NOT_ON_KAGGLE_IMAGE).
EXTRA_WHEELS: tuple[str, ...] = ()
SKIP_FROM_EXPORT = {"model.onnx"}  # the notebook predicts with PyTorch: no need to upload it twice
WHEEL_FILES = ("src", "pyproject.toml", "README.md", "LICENSE")  # what the wheel is built from


def offline_username() -> str:
    """The Kaggle user name without asking Kaggle (KAGGLE_USERNAME or kaggle.json); the push
    rewrites the metadata with the name Kaggle knows the token by."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    for folder in (os.environ.get("KAGGLE_CONFIG_DIR"), "~/.kaggle", "~/.config/kaggle"):
        try:
            return json.loads((Path(folder).expanduser() / "kaggle.json").read_text())["username"]
        except (TypeError, OSError, ValueError, KeyError):
            continue
    return "your-kaggle-username"


def tracked_files(repo: Path) -> list[str]:
    """The files of WHEEL_FILES that git tracks in `repo` (added or committed), relative paths."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--", *WHEEL_FILES],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        done = subprocess.CompletedProcess([], 1, "", str(e))
    if done.returncode or not done.stdout:
        said = (done.stderr or "git lists no file").strip().splitlines()[-1:] or [""]
        raise UserError(
            f"make kernel builds the kagglecv wheel from the files git tracks in {repo} ({said[0]}): "
            "run it in a git clone of kagglecv"
        )
    return [name for name in done.stdout.split("\0") if name]


def build_wheel(out: Path, repo: Path | None = None) -> str:
    """kagglecv's wheel, built from a copy of the files git tracks in the checkout (`repo`, default:
    the one kagglecv is imported from): an untracked file never travels to Kaggle."""
    import kagglecv

    repo = repo or Path(kagglecv.__file__).resolve().parents[2]
    if not (repo / "pyproject.toml").exists():
        raise UserError(f"make kernel builds the kagglecv wheel from a checkout; {repo} is none")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kagglecv"
        for name in tracked_files(repo):
            path = repo / name
            if path.is_file() and not path.is_symlink():  # a tracked file deleted here is left out
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, src / name)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        done = subprocess.run(
            [*cmd, "--quiet", "--disable-pip-version-check", "-w", str(out), str(src)],
            capture_output=True,
            text=True,
        )
    wheels = sorted(out.glob("kagglecv-*.whl"))
    if done.returncode or not wheels:
        raise UserError(f"building the kagglecv wheel failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return wheels[-1].name


def kernel_spec(comp: Competition, run_dir: Path) -> KernelSpec:
    """kernel.json: what the notebook needs beyond the export to write `make submit`'s file."""
    from kagglecv.core.runs import read_summary
    from kagglecv.predict.postprocess import postprocess_for_run
    from kagglecv.prepare.layout import read_prepared

    info = read_prepared(comp)
    cfg = read_yaml(run_dir / "config.yaml", "run config")
    return KernelSpec(
        run=run_dir.name,
        cv_mean=read_summary(run_dir).get("cv_mean"),
        competition=read_yaml(comp.path, "competition file"),
        train_counts=info.train_counts,
        postprocess=postprocess_for_run(comp.metric, run_dir, info.classes),
        predict=KernelPredict(
            device=cfg.get("device", "auto"),
            amp=bool(cfg.get("amp", True)),
            amp_dtype=cfg.get("amp_dtype", "auto"),
        ),
    )


def export_files(export: Path) -> list[Path]:
    """The files the export wrote, as its model.json lists them (model.json included): plain files
    with plain names, in the folder itself. Anything else in the folder stays here."""
    from kagglecv.ship.export import listed_files

    return [export / name for name in listed_files(export) if name not in SKIP_FROM_EXPORT]


def write_dataset(comp: Competition, run_dir: Path, export: Path, folder: Path, user: str) -> KernelSpec:
    folder.mkdir(parents=True)
    for p in export_files(export):
        link_or_copy(p, folder / p.name)
    spec = kernel_spec(comp, run_dir)
    spec.wheels = [build_wheel(folder), *EXTRA_WHEELS]
    (folder / KERNEL_JSON).write_text(json.dumps(spec.to_json(), indent=2))
    slug = short_slug(f"kagglecv {comp.slug} {run_dir.name}")
    meta = {"title": slug, "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(meta, indent=2))
    return spec


def fill_template(text: str, values: dict[str, object]) -> str:
    """`text` with each placeholder `"__KEY__"` (a whole string literal of the template) replaced by
    its value as a Python literal: data, whatever quotes, newlines or backslashes it holds. The
    result must parse, and no placeholder may stay (a template bug, not the user's)."""
    found = re.findall(r"__([A-Z]+)__", text)
    if sorted(found) != sorted(values):
        raise ValueError(f"the notebook template's placeholders {found} are not {sorted(values)}")
    for key, value in values.items():
        literal, placeholder = repr(value), f'"__{key}__"'
        if ast.literal_eval(literal) != value or text.count(placeholder) != 1:
            raise ValueError(f"the notebook template has no single {placeholder}, or {value!r} is no literal")
        text = text.replace(placeholder, literal)
    ast.parse(text)
    return text


def write_notebook(comp: Competition, spec: KernelSpec, folder: Path, dataset_id: str, user: str) -> None:
    folder.mkdir(parents=True)
    template = (resources.files("kagglecv.ship") / "templates" / "kernel_notebook.py").read_text()
    values = {"COMP": comp.slug, "RUN": spec.run, "WHEELS": list(spec.wheels)}
    (folder / NOTEBOOK_FILE).write_text(fill_template(template, values))
    slug = short_slug(f"kagglecv {comp.slug}")
    meta = {
        "id": f"{user}/{slug}",
        "title": slug,
        "code_file": NOTEBOOK_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": spec.predict.device != "cpu",
        "enable_internet": False,
        "dataset_sources": [dataset_id],
        "competition_sources": [comp.source.get("competition", comp.slug)],
        "kernel_sources": [],
    }
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2))
