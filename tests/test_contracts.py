"""The typed records one stage writes for another: prepared.json (PreparedInfo) and kernel.json
(KernelSpec). A file the previous release wrote (tests/fixtures/before-stages/) still loads; to_json
writes every key it read, the same keys as before; a key this release does not know is kept, a key
the file lacks gets its default; a fresh file written now reads back equal."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from kagglecv.core.competition import load_competition
from kagglecv.core.errors import UserError
from kagglecv.prepare.layout import read_prepared
from kagglecv.prepare.prepared import PreparedInfo
from kagglecv.ship.kernel_spec import KernelPredict, KernelSpec

BEFORE = Path(__file__).parent / "fixtures" / "before-stages"
DIGITS = [str(d) for d in range(10)]


def old(name: str) -> dict:
    return json.loads((BEFORE / name).read_text())


# --- prepared.json ----------------------------------------------------------------------------------


def test_the_previous_releases_prepared_json_loads_with_its_values():
    info = PreparedInfo.from_json(old("prepared.json"))
    assert info.competition == "digits-small" and info.classes == DIGITS
    assert info.train_counts == dict.fromkeys(DIGITS, 20)
    assert (info.n_train, info.n_test, info.n_folds, info.fold_seed) == (200, 1597, 5, 42)
    assert info.has_solution is True and info.prepared_at == "2026-12-07T22:28:01"
    assert info.unreadable_train == [] and info.unreadable_test == [] and info.extra == {}


def test_read_prepared_reads_the_previous_releases_file(workdir):
    (workdir / "data" / "digits-small").mkdir(parents=True)
    shutil.copy(BEFORE / "prepared.json", workdir / "data" / "digits-small" / "prepared.json")
    info = read_prepared(load_competition("digits-small"))
    assert isinstance(info, PreparedInfo) and info.n_test == 1597 and info.classes == DIGITS


def test_prepared_to_json_writes_back_every_key_in_the_same_order():
    data = old("prepared.json")
    out = PreparedInfo.from_json(data).to_json()
    assert out == data and list(out) == list(data)


def test_an_unknown_prepared_key_is_kept_and_written_back():
    data = {**old("prepared.json"), "from_a_newer_release": {"a": [1, 2]}}
    info = PreparedInfo.from_json(copy.deepcopy(data))
    assert info.extra == {"from_a_newer_release": {"a": [1, 2]}}
    assert info.to_json() == data


def test_a_missing_optional_prepared_key_gets_its_default():
    data = old("prepared.json")
    for key in ("train_counts", "n_folds", "fold_seed", "has_solution", "prepared_at", "unreadable_test"):
        del data[key]
    info = PreparedInfo.from_json(data)
    assert info.train_counts == {} and info.n_folds is None and info.fold_seed is None
    assert info.has_solution is False and info.prepared_at is None and info.unreadable_test == []
    assert info.n_test == 1597  # what the file has is still read
    out = info.to_json()
    assert set(out) == set(old("prepared.json")) and out["unreadable_test"] == [] and out["n_folds"] is None


def test_a_prepared_json_without_classes_or_with_a_wrong_value_is_damaged(workdir):
    data = old("prepared.json")
    with pytest.raises(ValueError, match="no classes"):
        PreparedInfo.from_json({k: v for k, v in data.items() if k != "classes"})
    with pytest.raises(ValueError, match="n_test"):
        PreparedInfo.from_json({**data, "n_test": "many"})
    with pytest.raises(ValueError, match="classes"):
        PreparedInfo.from_json({**data, "classes": "0123456789"})
    with pytest.raises(ValueError, match="not a JSON object"):
        PreparedInfo.from_json(["0", "1"])
    root = workdir / "data" / "digits-small"
    root.mkdir(parents=True)
    (root / "prepared.json").write_text(json.dumps({**data, "unreadable_test": 3}))
    with pytest.raises(UserError, match="not prepared yet"):  # damaged: `make data` lays it out again
        read_prepared(load_competition("digits-small"))


def test_a_fresh_prepared_json_reads_back_equal_with_the_previous_releases_keys(digits_small):
    path = digits_small / "data" / "digits-small" / "prepared.json"
    on_disk = json.loads(path.read_text())
    info = read_prepared(load_competition("digits-small"))
    assert info.to_json() == on_disk and PreparedInfo.from_json(info.to_json()) == info
    assert list(on_disk) == list(old("prepared.json"))  # the same keys, in the same order
    before = {k: v for k, v in old("prepared.json").items() if k != "prepared_at"}
    assert {k: v for k, v in on_disk.items() if k != "prepared_at"} == before  # same data, same record


# --- kernel.json --------------------------------------------------------------------------------------


def test_the_previous_releases_kernel_json_loads_with_its_values():
    spec = KernelSpec.from_json(old("kernel.json"))
    assert spec.format == 1 and spec.run == "old-run" and spec.cv_mean == 0.1
    assert spec.competition["slug"] == "digits-small" and spec.competition["layout"]["kind"] == "csv_pixels"
    assert spec.train_counts == dict.fromkeys(DIGITS, 20) and spec.postprocess == {"kind": "none"}
    assert spec.predict == KernelPredict(device="auto", amp=True, amp_dtype="auto")
    assert spec.wheels == [] and spec.extra == {}  # this file was saved before `wheels` was added


def test_the_notebook_loads_the_previous_releases_kernel_json(tmp_path):
    from kagglecv.ship.notebook import load_kernel_spec

    shutil.copy(BEFORE / "kernel.json", tmp_path / "kernel.json")
    spec, comp = load_kernel_spec(tmp_path)
    assert spec.run == "old-run" and comp.slug == "digits-small" and comp.metric == "accuracy"
    assert comp.submission.id_column == "ImageId" and comp.layout_options.id_start == 1


def test_kernel_to_json_writes_back_every_key():
    data = old("kernel.json")
    out = KernelSpec.from_json(data).to_json()
    assert {k: out[k] for k in data} == data and list(out)[: len(data)] == list(data)
    assert out["wheels"] == []  # the one key the file lacked, at its default


def test_an_unknown_kernel_key_is_kept_and_written_back():
    data = old("kernel.json")
    data["from_a_newer_release"] = 1
    data["predict"]["channels_last"] = True
    spec = KernelSpec.from_json(copy.deepcopy(data))
    assert spec.extra == {"from_a_newer_release": 1} and spec.predict.extra == {"channels_last": True}
    out = spec.to_json()
    assert out["from_a_newer_release"] == 1 and out["predict"]["channels_last"] is True


def test_a_missing_optional_kernel_key_gets_its_default_and_a_missing_run_is_damaged(tmp_path):
    data = old("kernel.json")
    for key in ("cv_mean", "train_counts", "postprocess", "format"):
        del data[key]
    del data["predict"]["amp_dtype"]
    spec = KernelSpec.from_json(data)
    assert spec.cv_mean is None and spec.train_counts == {} and spec.postprocess == {"kind": "none"}
    assert spec.format == 1 and spec.predict.amp_dtype == "auto" and spec.predict.amp is True
    with pytest.raises(ValueError, match="no run"):
        KernelSpec.from_json({k: v for k, v in data.items() if k != "run"})
    with pytest.raises(ValueError, match="competition"):
        KernelSpec.from_json({**data, "competition": "digits-small"})
    from kagglecv.ship.notebook import load_kernel_spec

    (tmp_path / "kernel.json").write_text(json.dumps({**data, "cv_mean": "high"}))
    with pytest.raises(UserError, match="kernel.json is damaged.*cv_mean"):
        load_kernel_spec(tmp_path)


def test_a_fresh_kernel_spec_equals_the_previous_releases_for_the_same_run(digits_small):
    """kernel_spec on the run the old kernel.json was made from, over freshly prepared data: the same
    record, and its JSON reads back equal."""
    from kagglecv.ship.kernel_dataset import kernel_spec

    run_dir = digits_small / "runs" / "digits-small" / "old-run"
    shutil.copytree(BEFORE / "old-run", run_dir)
    spec = kernel_spec(load_competition("digits-small"), run_dir)
    assert spec == KernelSpec.from_json(old("kernel.json"))
    text = json.dumps(spec.to_json(), indent=2)
    assert KernelSpec.from_json(json.loads(text)) == spec
    assert set(json.loads(text)) == {*old("kernel.json"), "wheels"}


# --- the model input a run shares across its folds (RunContext.inp) ---------------------------------


def test_model_input_is_typed_and_writes_the_checkpoint_meta_keys():
    from kagglecv.ml.model import ModelInput, create_model, resolve_input

    inp = resolve_input(create_model("test_resnet", num_classes=2), 24, None, [0.5, 0.5, 0.5])
    assert isinstance(inp, ModelInput) and inp.img_size == 24 and inp.std == [0.5, 0.5, 0.5]
    assert inp.to_json() == {"img_size": 24, "mean": inp.mean, "std": [0.5, 0.5, 0.5]}
    assert len(inp.mean) == 3 and all(isinstance(m, float) for m in inp.mean)
