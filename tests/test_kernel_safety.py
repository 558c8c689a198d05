"""make kernel sends only what was meant, runs only what kagglecv wrote: values in the notebook are
data, the dataset holds the export's own files of this very run, the wheel holds tracked files,
one `make kernel` of a run at a time, and a notebook-only competition never "uploads" silently."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kagglecv.ship.export as export_mod
from kagglecv.compete.upload import upload
from kagglecv.core.competition import load_competition
from kagglecv.core.errors import UserError
from kagglecv.ship import kernel as kernel_mod
from kagglecv.ship import kernel_dataset, kernel_folder
from kagglecv.ship.export import export_dir, export_run, run_fingerprint
from kagglecv.ship.kernel_spec import KernelSpec

RUN_PAYLOAD = 'r"""; open("pwned-run", "w").write("1"); """'
SLUG_PAYLOAD = "c'''\\\"; open('pwned-slug', 'w').write('1'); '''\n#"


def _assigned(tree: ast.Module, name: str):
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == name]
    return node.value


def test_values_pasted_into_the_notebook_are_data_not_code(workdir, tmp_path):
    """The notebook's run id and slug once went raw into its docstring: a `\"\"\"` in them ran code in
    the dry run (with the user's home) and on Kaggle. Now each is a literal, whatever it holds."""
    comp = load_competition("digits-demo")
    comp.slug = SLUG_PAYLOAD  # past every check: the notebook itself must still hold it as data
    spec = KernelSpec(run=RUN_PAYLOAD, competition={}, wheels=["kagglecv-0.1-py3-none-any.whl"])
    kernel_mod.write_notebook(comp, spec, tmp_path / "nb", "user/ds", "user")
    path = tmp_path / "nb" / kernel_folder.NOTEBOOK_FILE
    tree = ast.parse(path.read_text())
    assert "pwned" not in ast.get_docstring(tree)
    assert _assigned(tree, "RUN").value == RUN_PAYLOAD
    assert _assigned(tree, "COMPETITION").value == SLUG_PAYLOAD
    assert ast.literal_eval(_assigned(tree, "WHEELS")) == spec.wheels

    (tmp_path / "input").mkdir()
    (tmp_path / "cwd").mkdir()
    done = subprocess.run(  # as the dry run executes it: no dataset here, so it stops at once
        [sys.executable, str(path)],
        cwd=tmp_path / "cwd",
        env={**os.environ, "KAGGLECV_INPUT": str(tmp_path / "input"), "KAGGLECV_NO_NETWORK": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no dataset with kernel.json for run" in done.stderr
    assert not list((tmp_path / "cwd").iterdir())  # nothing the names held ran


def _no_wheel(monkeypatch):
    def fake(out: Path, repo=None) -> str:
        (out / "kagglecv-0.1-py3-none-any.whl").write_bytes(b"wheel")
        return "kagglecv-0.1-py3-none-any.whl"

    monkeypatch.setattr(kernel_dataset, "build_wheel", fake)


def _quick_export(monkeypatch):
    monkeypatch.setattr(export_mod, "write_onnx", lambda ens, path: path.write_bytes(b"onnx"))
    monkeypatch.setattr(export_mod, "onnx_parity", lambda ens, path, images: 0.0)


def test_the_dataset_takes_only_the_files_export_wrote(finished_run, monkeypatch):
    """A hidden file, a note and a link to a secret in the export folder stay here."""
    _no_wheel(monkeypatch)
    _quick_export(monkeypatch)
    comp = load_competition("digits-demo")
    export = export_run(comp, finished_run)
    listed = json.loads((export / "model.json").read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in export.iterdir())
    secret = finished_run.parents[2] / "home-secret.json"
    secret.write_text('{"key": "s3cret"}')
    (export / ".env").write_text("KAGGLE_KEY=s3cret\n")
    (export / "notes.txt").write_text("mine\n")
    (export / "fold9.safetensors").symlink_to(secret)
    out = kernel_folder.kernel_dir(comp, finished_run)
    kernel_mod.build(comp, finished_run, out)
    got = sorted(p.name for p in (out / "dataset").iterdir())
    meant = {n for n in listed if n != "model.onnx"} | {"kernel.json", "dataset-metadata.json"}
    assert got == sorted(meant | {"kagglecv-0.1-py3-none-any.whl"})


def test_a_stale_export_of_an_older_run_of_that_name_is_not_reused(finished_run, monkeypatch, capsys):
    """exports/<comp>-<run>/ of an older, deleted run with the same name: left as it is (it may be
    the only copy of that model), and this run exported afresh into the kernel's dataset."""
    _no_wheel(monkeypatch)
    _quick_export(monkeypatch)
    comp = load_competition("digits-demo")
    stale = export_dir(comp, finished_run)
    stale.mkdir(parents=True)
    old = {"run": finished_run.name, "files": ["fold0.safetensors", "model.json"]}
    old["fingerprint"] = {"run": finished_run.name, "checkpoints": {"fold0.pt": "0" * 64}}
    (stale / "model.json").write_text(json.dumps(old))
    (stale / "fold0.safetensors").write_bytes(b"the older run's weights")
    out = kernel_folder.kernel_dir(comp, finished_run)
    capsys.readouterr()
    kernel_mod.build(comp, finished_run, out)
    assert "is not an export of this run" in capsys.readouterr().out
    shipped = json.loads((out / "dataset" / "model.json").read_text())
    assert shipped["fingerprint"] == run_fingerprint(finished_run, [0, 1])
    assert (out / "dataset" / "fold0.safetensors").read_bytes() != b"the older run's weights"
    assert (stale / "fold0.safetensors").read_bytes() == b"the older run's weights"  # untouched
    assert json.loads((stale / "model.json").read_text()) == old
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "notebook"]  # no second copy left


def test_a_kernel_folder_built_from_another_run_of_that_name_is_not_dry_run(finished_run, monkeypatch):
    comp = load_competition("digits-demo")
    out = kernel_folder.kernel_dir(comp, finished_run)
    (out / "dataset").mkdir(parents=True)
    (out / "notebook").mkdir()
    old = {"run": finished_run.name, "fingerprint": {"run": finished_run.name, "checkpoints": {}}}
    (out / "dataset" / "model.json").write_text(json.dumps(old))

    def must_not_run(*args, **kwargs):
        raise AssertionError("dry-ran a kernel folder of another run")

    monkeypatch.setattr(kernel_mod, "dry_run", must_not_run)
    with pytest.raises(UserError, match=f"built from another run named {finished_run.name}") as e:
        kernel_mod.make_kernel(comp, finished_run.name)
    assert "make kernel FORCE=1" in str(e.value) and (out / "dataset" / "model.json").exists()


def test_two_make_kernel_of_one_run_do_not_share_the_folder(finished_run, monkeypatch):
    comp = load_competition("digits-demo")
    out = kernel_folder.kernel_dir(comp, finished_run)

    def must_not_run(*args, **kwargs):
        raise AssertionError("built or dry-run while another make kernel held the folder")

    monkeypatch.setattr(kernel_mod, "build", must_not_run)
    monkeypatch.setattr(kernel_mod, "dry_run", must_not_run)
    with kernel_mod.kernel_lock(out):  # another `make kernel` of this run, under way
        with pytest.raises(UserError, match="in use: another `make kernel` of this run") as e:
            kernel_mod.make_kernel(comp, finished_run.name, force=True)
    assert "\n" not in str(e.value)


def _tiny_checkout(root: Path) -> Path:
    (root / "src" / "kagglecv").mkdir(parents=True)
    (root / "src" / "leak").mkdir()
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "kagglecv"\nversion = "0.1"\n[tool.setuptools.packages.find]\nwhere = ["src"]\n'
    )
    (root / "src" / "kagglecv" / "__init__.py").write_text("")
    (root / "src" / "kagglecv" / "scratch.py").write_text("TOKEN = 's3cret'\n")  # never added
    (root / "src" / "leak" / "__init__.py").write_text("")  # an untracked package
    return root


def test_the_wheel_holds_only_the_files_git_tracks(tmp_path):
    repo = _tiny_checkout(tmp_path / "repo")
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pyproject.toml", "src/kagglecv/__init__.py"], check=True)
    out = tmp_path / "out"
    out.mkdir()
    name = kernel_dataset.build_wheel(out, repo)
    names = zipfile.ZipFile(out / name).namelist()
    assert "kagglecv/__init__.py" in names
    assert not [n for n in names if "scratch" in n or n.startswith("leak/")], names


def test_a_wheel_needs_a_git_checkout(tmp_path):
    repo = _tiny_checkout(tmp_path / "repo")
    with pytest.raises(UserError, match="builds the kagglecv wheel from the files git tracks"):
        kernel_dataset.build_wheel(tmp_path, repo)


def test_upload_to_a_notebook_only_competition_is_an_error_that_says_how(workdir):
    """`make submit UPLOAD=1` on aerial cactus exited 0 with nothing sent."""
    comp = load_competition("aerial-cactus-identification")
    with pytest.raises(UserError) as e:
        upload(comp, Path("submissions/aerial-cactus-identification-r1.csv"), "r1", 0.9)
    said = str(e.value)
    assert "takes submissions only from Kaggle notebooks: nothing was uploaded" in said
    assert "make kernel PUSH=1 RUN=r1" in said and "make submit KERNEL=1 RUN=r1" in said
    assert "\n" not in said
