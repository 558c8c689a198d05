"""A map of the data in the model's own feature space: penultimate-layer features (timm's
forward_features + forward_head(pre_logits=True)) projected to 2-D with scikit-learn's t-SNE.

Training images: out-of-fold, each by the fold model that held it out, so a mislabelled image sits
among the images it looks like, not where training pulled it. Test images: by the first fold's
model. Fold models do not share one feature space (from scratch, not even roughly), so each other
fold's features are mapped onto the first fold's by an orthogonal Procrustes fit (rotation + scale)
on up to 512 test images that every fold model embeds (the anchors).

Whether the test set sits apart from train is measured in the first fold model's space alone, on
images it never trained on: the median distance from each test image to its nearest held-out
training image, over the median distance from each held-out training image to its nearest other
one. A ratio above OOD_RATIO says the test images lie outside the training distribution.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

OOD_RATIO = 1.5
PCA_DIMS = 50  # t-SNE on at most this many principal components (the usual speed-up)
TSNE_ITER = 500  # scikit-learn's default 1000 barely moves a map of this use; half the time


def features(model, x) -> np.ndarray:
    """Penultimate-layer features of a normalised batch."""
    import torch

    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True).float().cpu().numpy()


def procrustes(src: np.ndarray, dst: np.ndarray):
    """The rotation + scale + shift that best maps src's rows onto dst's: a function of features."""
    from scipy.linalg import orthogonal_procrustes

    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    rot, sing = orthogonal_procrustes(a, b)
    scale = sing / max(float((a**2).sum()), 1e-12)
    return lambda f: (f - mu_s) @ rot * scale + mu_d


def nearest(query: np.ndarray, ref: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each query row to its nearest ref row (itself left out if asked)."""
    from sklearn.neighbors import NearestNeighbors

    k = 2 if exclude_self else 1
    dist, _ = NearestNeighbors(n_neighbors=min(k, len(ref))).fit(ref).kneighbors(query)
    return dist[:, -1]


def ood_ratio(heldout: np.ndarray, test: np.ndarray) -> float | None:
    """median NN distance test -> held-out train / median NN distance held-out -> other held-out."""
    if len(heldout) < 3 or len(test) == 0:
        return None
    inside = float(np.median(nearest(heldout, heldout, exclude_self=True)))
    return float(np.median(nearest(test, heldout))) / max(inside, 1e-12)


def ood_line(ratio: float | None, fold: int) -> str:
    if ratio is None:
        return "Test vs train: not measured (no test images, or too few held-out images)."
    verdict = (
        "the test images lie OUTSIDE the training distribution"
        if ratio > OOD_RATIO
        else "the test images lie within the training distribution"
    )
    return (
        f"Test vs train: nearest-neighbour distance ratio {ratio:.2f} (test -> held-out train over "
        f"held-out -> held-out, fold {fold}'s feature space; above {OOD_RATIO} means apart): {verdict}."
    )


def project(feats: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates (after PCA to PCA_DIMS dimensions where there are more)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(feats)
    if n < 4:
        return np.zeros((n, 2))
    x = feats - feats.mean(0)
    if x.shape[1] > PCA_DIMS and n > PCA_DIMS:
        x = PCA(PCA_DIMS, random_state=seed).fit_transform(x)
    tsne = TSNE(
        n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", max_iter=TSNE_ITER, random_state=seed
    )
    return tsne.fit_transform(x.astype(np.float32))


def map_frame(coords: np.ndarray, train: pd.DataFrame, test_images: list[str]) -> pd.DataFrame:
    """datamap.csv: one row per image, train (out-of-fold) then test."""
    n = len(train)
    test = pd.DataFrame({"image": test_images, "split": "test"})
    df = pd.concat([train.assign(split="train"), test], ignore_index=True)
    df["x"], df["y"] = coords[:, 0], coords[:, 1]
    df.loc[n:, ["wrong", "suspect"]] = False
    return df[["image", "split", "label", "pred", "fold", "wrong", "suspect", "x", "y"]]


def fig_map(df: pd.DataFrame, classes: list[str], note: str):
    """Train points coloured by given label, test points grey; x: misclassified; ring: suspect label."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7.5), dpi=100)
    ax = fig.subplots()
    test, train = df[df["split"] == "test"], df[df["split"] == "train"]
    ax.scatter(test["x"], test["y"], s=6, c="0.7", alpha=0.6, lw=0, label=f"test ({len(test)})")
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    codes = pd.Categorical(train["label"], categories=classes).codes
    ax.scatter(train["x"], train["y"], s=7, c=codes, cmap=cmap, vmin=0, vmax=max(len(classes) - 1, 1), lw=0)
    wrong, sus = train[train["wrong"].astype(bool)], train[train["suspect"].astype(bool)]
    ax.scatter(
        wrong["x"], wrong["y"], s=22, marker="x", c="black", lw=0.8, label=f"misclassified ({len(wrong)})"
    )
    ax.scatter(sus["x"], sus["y"], s=70, facecolors="none", edgecolors="red", lw=1.2,
               label=f"suspect label ({len(sus)})")  # fmt: skip
    if len(classes) <= 20:  # a class name at each class's median position
        for i, c in enumerate(classes):
            pts = train[codes == i]
            if len(pts):
                ax.text(pts["x"].median(), pts["y"].median(), str(c)[:14], fontsize=9, weight="bold",
                        ha="center", va="center", alpha=0.85)  # fmt: skip
    ax.legend(loc="best", fontsize=8)
    ax.set(xticks=[], yticks=[], title="the data in the model's feature space (t-SNE)")
    ax.set_xlabel(note, fontsize=8)
    return fig
