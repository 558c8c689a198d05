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
