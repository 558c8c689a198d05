"""Issue 14, progressive resizing on the CPU: the size schedule, a 3-size run whose resume after an
interruption mid-stage is bit-identical, test_size at prediction, and the size marks on the curves."""

import numpy as np
import pandas as pd
import pytest
import torch

import kagglecv.predict.test_set as predict_mod
from helpers.cli import cli_text
from helpers.runs import interrupted_at_validation
from kagglecv.cli import main
from kagglecv.core.checkpoint import load_checkpoint
from kagglecv.core.competition import load_competition
from kagglecv.core.config import load_config, stage_sizes
from kagglecv.core.errors import UserError
from kagglecv.core.figures import fig_curves, size_changes
from kagglecv.predict.ensemble import load_fold_models
from kagglecv.predict.new_images import load_ensemble, predict_paths
from kagglecv.predict.test_set import predict_test
from kagglecv.train.run import train

# 2 folds x (16, 24, 32, 32 px, then one low-LR epoch at 40 px); predicted at 48 px
RECIPE = [
    "device=cpu",
    "lr=0.003",
    "batch_size=64",
    "img_sizes=[16, 24, 32]",
    "epochs=4",
    "final_size=40",
    "final_epochs=1",
    "test_size=48",
]


def test_stage_sizes_spread_the_epochs_over_growing_sizes():
    cfg = load_config("configs/smoke.yaml", ["img_sizes=[16, 24, 32]", "epochs=4", "freeze_epochs=1"])
    assert stage_sizes(cfg, 32) == [16, 24, 24, 32, 32]  # the later, larger stages take the extra epochs
    cfg = load_config(None, ["progressive=true", "epochs=6", "final_size=288", "final_epochs=2"])
    assert stage_sizes(cfg, 224) == [112, 112, 168, 168, 224, 224, 288, 288]
    assert stage_sizes(load_config(None, ["epochs=2"]), 32) == [32, 32]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["img_sizes=[32, 16]"], "growing sizes"),
        (["img_sizes=[16, 32]", "progressive=true"], "not both"),
        (["img_sizes=[8, 16, 24]", "epochs=2"], "at least as many epochs"),
        (["img_sizes=[4, 16]"], "at least 8 pixels"),
        (["test_size=4"], "test_size must be at least 8"),
        (["final_lr_mult=0"], "final_lr_mult must lie in"),
        (["img_size=[16, 32]"], "'img_size' must be"),
        (["img_size=32", "final_size=16"], "final_size 16 is smaller than the training size 32"),
        (["img_sizes=[16, 32]", "final_size=24"], "final_size 24 is smaller than the training size 32"),
    ],
)
def test_bad_size_keys_are_one_line_errors(overrides, says):
    with pytest.raises(UserError, match=says):
        load_config(None, overrides)


def test_a_final_size_below_the_models_own_size_is_refused_before_a_run_folder(digits_small, capsys):
    """img_size: null trains at the model's own size, known once the model is made: still one line."""
    args = ["train", "-c", "digits-small", "--config", "configs/smoke.yaml", "device=cpu", "lr=0.01"]
    assert main([*args, "img_size=null", "final_size=16"]) == 2
    assert "error: config: final_size 16 is smaller than the training size" in cli_text(capsys)
    assert not (digits_small / "runs").exists()


def test_progressive_run_records_sizes_and_resumes_bit_identical(digits_small, monkeypatch):
    comp = load_competition("digits-small")
    cfg = load_config("configs/smoke.yaml", RECIPE)
    straight = train(comp, cfg)
    rows = pd.read_csv(straight / "metrics.csv")
    assert rows.groupby("fold")["img_size"].apply(list).tolist() == [[16, 24, 32, 32, 40]] * 2
    a, meta = load_checkpoint(straight / "fold1.pt")
    assert meta.img_size == [16, 24, 32, 32, 40][meta.best_epoch]  # validated at its stage's size
    assert meta.train_sizes == [16, 24, 32, 40] and meta.test_size == 48

    # fold 1 alone, Ctrl-C at its 4th validation: it resumes after epoch 2, inside the 32 px stage
    with interrupted_at_validation(monkeypatch, 4), pytest.raises(KeyboardInterrupt):
        train(comp, cfg, fold_ids=[1])
    (cut,) = [p for p in straight.parent.iterdir() if not (p / "summary.json").exists()]
    assert torch.load(cut / "fold1.last.pt", weights_only=True)["epoch"] == 2
    train(comp, cfg, resume=True)  # the latest unfinished run, with its saved config
    b, _ = load_checkpoint(cut / "fold1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(cut / "metrics.csv").equals(rows[rows["fold"] == 1].reset_index(drop=True))

    # the test set is predicted at test_size, and the cache key knows the size
    seen = []
    real = predict_mod.decode_test
    monkeypatch.setattr(
        predict_mod, "decode_test", lambda p, size, *a: seen.append(size) or real(p, size, *a)
    )
    paths = sorted(comp.data_dir.joinpath("test").glob("*.png"))[:8]
    models = load_fold_models(straight, [0, 1], torch.device("cpu"))
    out = predict_test(
        models, run_dir=straight, paths=paths, data_root=comp.data_dir, hflip=False, vflip=False
    )
    assert seen == [48] and out["probs"].shape == (8, 10)
    # `make predict` (and the export and notebook, which take their size from it) at test_size too
    ens = load_ensemble(comp, straight, torch.device("cpu"))
    assert ens.img_size == 48 and not ens.flips and ens.scales == [1.0]
    assert np.allclose(predict_paths(ens, paths)[0], out["probs"], atol=1e-5)
    key = predict_mod.cache_key(paths, comp.data_dir, [], straight, [0, 1], [32, 32])
    assert out["key"] != key


def test_curves_mark_where_the_size_changed():
    m = pd.DataFrame(
        [(k, e, 0.1, 1.0, 1.0, 0.5, s) for k in (0, 1) for e, s in enumerate([16, 24, 32, 32])],
        columns=["fold", "epoch", "lr", "train_loss", "val_loss", "metric", "img_size"],
    )
    assert size_changes(m) == [(0, 16), (1, 24), (2, 32)]
    ax = fig_curves(m, {0: 3}, "accuracy").axes[1]
    assert [t.get_text() for t in ax.texts] == ["16px", "24px", "32px"]
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":") == [0.5, 1.5]
    assert size_changes(m.drop(columns="img_size")) == []  # metrics.csv of an older run
