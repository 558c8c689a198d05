"""One augmentation spec, two pipelines (augment.py): the per-item albumentations transform (the
DataLoader path) and the per-batch BatchAffine (the in-RAM path) draw from the same distributions,
measured back from the images, and both match what the spec says a draw means."""

from types import SimpleNamespace

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from scipy import stats

from kagglecv.core.errors import UserError
from kagglecv.ml.augment import Augment, ItemAffine
from kagglecv.ml.data import ImageDataset, make_loader

SIZE = 96
SIGMA = (8.0, 3.0)  # the blob's spread along x and y (pixels), before any zoom
MARK = 12  # the marker sits MARK pixels right of and below the centre
SPEC = Augment(rotate=30, shift=0.1, scale=0.3, hflip=True, vflip=True)  # wider than a recipe's, to see
N = 400  # draws per path
KS = 1.95  # the two-sample KS statistic at alpha 0.001, times sqrt(n m / (n + m))


def probe() -> np.ndarray:
    """A centred Gaussian blob elongated along x (red; its second moments give the angle and the
    zoom, its centroid the shift) and a small marker right of and below it (green; its side of
    the blob gives the flips). Everything stays inside the image whatever the draw."""
    y, x = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    img = np.zeros((SIZE, SIZE, 3))
    img[..., 0] = np.exp(-0.5 * ((x / SIGMA[0]) ** 2 + (y / SIGMA[1]) ** 2))
    img[..., 1] = np.exp(-0.5 * (((x - MARK) / 2) ** 2 + ((y - MARK) / 2) ** 2))
    return np.round(img * 255).astype(np.uint8)


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """N x H x W x 3 images of the transformed probe -> per image: angle (degrees, as the blob's
    long axis lies), zoom (its size against the probe's), aspect (its long/short ratio against the
    probe's: 1 for an isotropic zoom), dx, dy (its centroid's offset, fractions of the side) and
    the flips (which side of the blob the marker is on)."""
    h, w = images.shape[1:3]
    y, x = np.mgrid[:h, :w] - np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None]

    def moments(weights):
        total = weights.sum((1, 2))
        cx, cy = (weights * x).sum((1, 2)) / total, (weights * y).sum((1, 2)) / total
        ux, uy = x - cx[:, None, None], y - cy[:, None, None]
        cov = [(weights * a * b).sum((1, 2)) / total for a, b in ((ux, ux), (uy, uy), (ux, uy))]
        return cx, cy, cov

    cx, cy, (cxx, cyy, cxy) = moments(images[..., 0].astype(np.float64))
    mx, my, _ = moments(images[..., 1].astype(np.float64))
    det, half_trace = cxx * cyy - cxy**2, (cxx + cyy) / 2
    root = np.sqrt(half_trace**2 - det)
    return {
        "angle": 0.5 * np.degrees(np.arctan2(2 * cxy, cxx - cyy)),
        "zoom": det**0.25,
        "aspect": np.sqrt((half_trace + root) / (half_trace - root)),
        "dx": cx / w,
        "dy": cy / h,
        "hflip": mx < cx,
        "vflip": my < cy,
    }


def per_item(spec: Augment, n: int, seed: int = 0) -> np.ndarray:
    transform, img = spec.per_item(seed), probe()
    return np.stack([transform(image=img)["image"] for _ in range(n)])


def per_batch(spec: Augment, n: int, seed: int = 0) -> np.ndarray:
    x = torch.from_numpy(np.repeat(probe()[None], n, 0)).permute(0, 3, 1, 2).float()
    return spec.per_batch(seed)(x).permute(0, 2, 3, 1).numpy()


def measured(spec: Augment, path) -> dict[str, np.ndarray]:
    """The path's draws as measured, zoom and aspect relative to the untouched probe's."""
    plain = measure(probe()[None].astype(np.float64))
    out = measure(path(spec, N).astype(np.float64))
    out["zoom"], out["aspect"] = out["zoom"] / plain["zoom"], out["aspect"] / plain["aspect"]
    return out


@pytest.fixture(scope="module")
def draws():
    return measured(SPEC, per_item), measured(SPEC, per_batch)


def test_both_paths_draw_rotation_zoom_and_shift_from_the_same_distributions(draws):
    item, batch = draws
    limit = KS * np.sqrt(2 / N)  # 0.138 for 400 draws a side
    for key in ("angle", "zoom", "dx", "dy"):
        assert stats.ks_2samp(item[key], batch[key]).statistic < limit, key
        q = [0.1, 0.25, 0.5, 0.75, 0.9]  # the spreads, side by side (a tenth of the range apart at most)
        width = {"angle": 2 * SPEC.rotate, "zoom": 2 * SPEC.scale}.get(key, 2 * SPEC.shift)
        assert np.allclose(np.quantile(item[key], q), np.quantile(batch[key], q), atol=width / 10), key
    for path in draws:  # one zoom for both axes: the blob keeps its shape
        assert np.abs(path["aspect"] - 1).max() < 0.02


@pytest.mark.parametrize("path", [0, 1], ids=["per-item", "per-batch"])
def test_each_path_draws_what_the_spec_says(draws, path):
    """angle ~ U(-rotate, rotate) degrees, zoom ~ U(1 - scale, 1 + scale), dx, dy ~ U(-shift, shift)
    of the side, each flip with probability 0.5 and independently."""
    got = draws[path]
    expect = {
        "angle": stats.uniform(-SPEC.rotate, 2 * SPEC.rotate),
        "zoom": stats.uniform(1 - SPEC.scale, 2 * SPEC.scale),
        "dx": stats.uniform(-SPEC.shift, 2 * SPEC.shift),
        "dy": stats.uniform(-SPEC.shift, 2 * SPEC.shift),
    }
    for key, dist in expect.items():
        assert stats.kstest(got[key], dist.cdf).statistic < KS / np.sqrt(N), key
        low, high = dist.support()
        slack = 0.02 * (high - low)  # the extremes reach the ends of the range, and no further
        assert low - slack < got[key].min() < low + slack and high - slack < got[key].max() < high + slack, (
            key
        )
    sigma = np.sqrt(0.25 / N)
    for flips, rate in ((got["hflip"], 0.5), (got["vflip"], 0.5), (got["hflip"] & got["vflip"], 0.25)):
        assert abs(flips.mean() - rate) < 4 * sigma


def test_flip_rates_agree_between_the_paths(draws):
    item, batch = draws
    for key in ("hflip", "vflip"):
        assert abs(item[key].mean() - batch[key].mean()) < 4 * np.sqrt(0.5 / N), key


def test_only_the_allowed_flips_and_they_only_mirror():
    spec = Augment(hflip=True)
    img = probe()
    for out in (per_item(spec, 64), per_batch(spec, 64)):
        mirrored = [np.allclose(o, img[:, ::-1], atol=1e-3) for o in out]
        same = [np.allclose(o, img, atol=1e-3) for o in out]
        assert all(a != b for a, b in zip(same, mirrored, strict=True)) and 16 < sum(mirrored) < 48


def test_the_same_draw_gives_the_same_image_on_both_paths():
    """Not only the distributions: one draw moves the pixels alike (centre, directions, border)."""
    spec, img = SPEC, probe()
    batch = spec.per_batch(3)
    params = batch.draw(8)
    x = torch.from_numpy(np.repeat(img[None], 8, 0)).permute(0, 3, 1, 2).float()
    theirs = batch.apply(x, **params).permute(0, 2, 3, 1).numpy()
    item = ItemAffine(spec)
    for i in range(8):
        ours = item.apply(img, **{k: v[i] for k, v in params.items()}).astype(np.float64)
        assert np.abs(ours - theirs[i]).max() < 3 and np.abs(ours - theirs[i]).mean() < 0.1


@pytest.mark.parametrize("angle, zoom, dx, dy", [(20, 1, 0, 0), (0, 1.25, 0, 0), (0, 1, 6 / SIZE, -9 / SIZE)])
def test_a_draw_means_what_albumentations_affine_means(angle, zoom, dx, dy):
    """Degrees counter-clockwise, zoom > 1 magnifies, shift a fraction of the side: as A.Affine with
    one zoom for both axes (keep_ratio) and whole-pixel shifts (it rounds them), borders replicated."""
    img = probe()
    ref = A.Affine(
        rotate=(angle, angle),
        scale=(zoom, zoom),
        translate_percent=(dx, dy) if dx == dy else {"x": (dx, dx), "y": (dy, dy)},
        keep_ratio=True,
        border_mode=cv2.BORDER_REPLICATE,
        p=1.0,
    )(image=img)["image"]
    ours = ItemAffine(Augment(rotate=1)).apply(img, angle, zoom, dx, dy, False, False)
    assert np.abs(ours.astype(int) - ref).max() <= 2


def test_the_border_is_replicated_on_both_paths():
    flat = np.full((SIZE, SIZE, 3), 200, np.uint8)
    transform = SPEC.per_item(0)
    assert all((transform(image=flat)["image"] == 200).all() for _ in range(20))
    x = torch.full((20, 3, SIZE, SIZE), 200.0)
    assert torch.allclose(SPEC.per_batch(0)(x), x)


def test_one_seed_one_stream_per_item():
    """set_random_seed (every epoch, and in each DataLoader worker) restarts the per-item stream,
    so a resumed run draws what an uninterrupted one would."""
    images, labels = np.repeat(probe()[None], 12, 0), np.arange(12) % 2
    ds = ImageDataset([""] * 12, labels, SIZE, images, transform=SPEC.per_item(4))

    def epoch(seed):
        ds.transform.set_random_seed(seed)
        return torch.cat([x for x, _ in make_loader(ds, batch_size=4, shuffle=False, workers=0)])

    a, b, c = epoch(5), epoch(5), epoch(6)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a[0], a[1])


def test_the_spec_comes_from_the_recipe_and_the_competition():
    cfg = SimpleNamespace(rotate=10, shift=0.1, scale=0.1)
    assert Augment.from_recipe(cfg, hflip=True, vflip=False) == Augment(10.0, 0.1, 0.1, True, False)
    assert not Augment() and Augment(hflip=True) and not Augment(hflip=True).affine
    assert Augment().per_item(0).transforms == []  # nothing to draw: the images pass untouched
    with pytest.raises(UserError, match="scale must lie in"):
        Augment(scale=1.0)
