"""Look inside a run (issue 15): galleries checked against oof.csv, heatmaps of the image's shape
that are not flat, one map point per image, and one clear line where something is not supported.

The session's finished run (2 folds x 1 epoch at 32 px on digits-demo) and one build of the look,
shared by the module's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from kagglecv.core.errors import UserError
from kagglecv.report.look import build_look
from kagglecv.report.look.cam import cam_target, heatmaps
from kagglecv.report.look.galleries import PER_KIND


@pytest.fixture(scope="module")
def looked(tmp_path_factory, finished_run_built):
    """(run folder, data folder, LookResult) of the session's finished run, copied here so the look
    it gains stays out of other tests' copies."""
    from kagglecv.report.look import datamap

    built_root, rel = finished_run_built
    root = tmp_path_factory.mktemp("look")
    run_dir = shutil.copytree(built_root / rel, root / rel)
    data_dir = built_root / "data" / "digits-demo"  # only read
    with pytest.MonkeyPatch.context() as mp:
        # the map of 1,797 images with scikit-learn's fewest t-SNE iterations (250, its early
        # exaggeration phase): the same points, checked for shape, not for how settled they are
        mp.setattr(datamap, "TSNE_ITER", 250)
        return run_dir, data_dir, build_look(run_dir, data_dir, run_dir / "look", force=True, max_classes=4)


def test_galleries_hold_the_oof_extremes(looked):
    run_dir, _, result = looked
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"label": str, "image": str})
    classes = [c[2:] for c in oof.columns if c.startswith("p_")]
    probs = oof[[f"p_{c}" for c in classes]].to_numpy()
    pred = np.array(classes)[probs.argmax(1)]
    p_pred = probs.max(1)
    top2 = np.sort(probs, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    gal = pd.read_csv(result.out_dir / "galleries.csv", dtype={"class": str, "image": str})
    gal = gal[gal["kind"] != "top loss"]
    errors = (oof["label"] != pred).groupby(oof["label"]).sum().reindex(classes, fill_value=0)
    order = errors.sort_values(ascending=False, kind="stable").index[:4].tolist()
    assert gal["class"].unique().tolist() == order  # most errors first, capped
    for cls in gal["class"].unique():
        own = oof["label"] == cls
        expect = {
            "right": oof[own & (pred == cls)].assign(k=-p_pred[own & (pred == cls)]),
            "wrong": oof[own & (pred != cls)].assign(k=-p_pred[own & (pred != cls)]),
            "uncertain": oof[own].assign(k=margin[own]),
        }
        for kind, df in expect.items():
            want = df.sort_values("k", kind="stable")["image"].head(PER_KIND).tolist()
            got = gal[(gal["class"] == cls) & (gal["kind"] == kind)].sort_values("rank")["image"].tolist()
            assert got == want, (cls, kind)
    assert all((result.out_dir / f"gallery_{i:02d}.png").is_file() for i in range(gal["class"].nunique()))
    assert "Galleries" in result.html and "data:image/png;base64," in result.html


def test_heatmaps_have_the_image_shape_and_are_not_flat(looked):
    run_dir, _, result = looked
    gal = pd.read_csv(result.out_dir / "galleries.csv", dtype={"image": str})
    assert set(result.heatmaps) == set(gal["image"])  # every gallery and top-loss image has one
    assert all(heat.shape == (32, 32) for heat in result.heatmaps.values())  # the run's img_size
    flat = [h for h in result.heatmaps.values() if h.max() - h.min() < 0.1]
    # a flat map is Grad-CAM's ReLU finding no positive evidence at all (all zero), and rare
    assert len(flat) <= 0.1 * len(result.heatmaps) and all(h.max() == 0 for h in flat)


def test_map_has_one_point_per_image(looked):
    run_dir, data_dir, result = looked
    df = pd.read_csv(result.out_dir / "datamap.csv", dtype={"image": str})
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"image": str})
    tests = sorted(p.name for p in (data_dir / "test").iterdir())
    assert df[df["split"] == "train"]["image"].tolist() == oof["image"].tolist()
    assert sorted(Path(p).name for p in df[df["split"] == "test"]["image"]) == tests
    assert len(df) == len(oof) + len(tests) and np.isfinite(df[["x", "y"]].to_numpy()).all()
    assert df["x"].std() > 0 and "Test vs train: nearest-neighbour distance ratio" in result.html


def test_over_budget_builds_nothing_and_says_how_long(looked, tmp_path):
    run_dir, data_dir, _ = looked
    result = build_look(run_dir, data_dir, tmp_path / "look", budget_s=0)
    assert result.skipped and result.estimate_s > 0 and not (tmp_path / "look").exists()
    assert "--look" in result.html and "skipped" in result.html


def test_unsupported_model_is_one_line():
    pit = timm.create_model("pit_ti_224", num_classes=3).eval()  # features: one pooled token
    with pytest.raises(UserError) as e:
        cam_target(pit, "pit_ti_224", 224)
    assert "\n" not in str(e.value) and "pit_ti_224 is not supported" in str(e.value)


def test_unsupported_model_becomes_a_note(looked, monkeypatch):
    import kagglecv.report.look.passes as passes
    from kagglecv.report.look.galleries import gallery_rows
    from kagglecv.report.page import load_run

    def refuse(model, name, size, in_chans=3):
        raise UserError(f"heatmaps: {name} is not supported (test)")

    monkeypatch.setattr(passes, "cam_target", refuse)
    run_dir, data_dir, _ = looked
    run = load_run(run_dir)
    ctx = passes.open_context(run, data_dir)
    fp = passes.fold_passes(ctx, gallery_rows(run, per_kind=1, cap=2))
    assert fp.notes == ["heatmaps: test_resnet is not supported (test)"] and not fp.cams
    assert fp.train_feats and fp.images  # the galleries and the map go on without heatmaps


@pytest.mark.parametrize("name", ["test_vit", "test_mambaout", "test_convnext"])
def test_vit_nhwc_and_cnn_heatmaps(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).eval()
    target = cam_target(model, name, 64)
    heat = heatmaps(model, target, torch.randn(2, 3, 64, 64), [0, 1])
    assert heat.shape == (2, 64, 64) and (heat.max((1, 2)) - heat.min((1, 2)) > 0.1).all()


def test_missing_pieces_are_one_line(looked, tmp_path):
    run_dir, data_dir, _ = looked
    with pytest.raises(UserError, match="not under .* run from the project folder"):
        build_look(run_dir, tmp_path, tmp_path / "look")
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("look"))
    (copy / "fold1.pt").unlink()
    with pytest.raises(UserError, match="has no fold1.pt"):
        build_look(copy, data_dir, tmp_path / "look")
    oof = pd.read_csv(copy / "oof.csv").drop(columns="fold")
    oof.to_csv(copy / "oof.csv", index=False)
    with pytest.raises(UserError, match="no fold column"):
        build_look(copy, data_dir, tmp_path / "look")


def test_fold_spaces_aligned_and_test_shift_measured():
    from kagglecv.report.look.datamap import OOD_RATIO, ood_ratio, procrustes

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 8))
    rot, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    other = 3.0 * ref @ rot + 5.0  # another fold model's space: rotated, scaled, shifted
    assert np.allclose(procrustes(other, ref)(other), ref, atol=1e-6)
    heldout = rng.normal(size=(300, 8))
    assert ood_ratio(heldout, rng.normal(size=(200, 8))) < OOD_RATIO  # same distribution
    assert ood_ratio(heldout, rng.normal(size=(200, 8)) + 4.0) > OOD_RATIO  # test set apart
