import json

from kagglecv.bench.throughput import run_bench, synthetic_images


def test_bench_measures_all_three_and_writes_json(workdir):
    out = run_bench(["test_resnet"], img_size=32, batch=8, n_images=24, batches=2, workers=0)
    (r,) = out["results"]
    for key in ("model_only", "data_only", "full"):
        assert r[key] > 0
    assert abs(r["full_vs_min"] - r["full"] / min(r["model_only"], r["data_only"])) < 1e-9
    saved = json.loads((workdir / "runs" / "bench" / "latest.json").read_text())
    assert saved["results"][0]["model"] == "test_resnet"


def test_synthetic_images_are_dogs_vs_cats_sized(tmp_path):
    import cv2

    paths = synthetic_images(tmp_path, 4)
    assert [p.parent.name for p in paths] == ["cat", "dog", "cat", "dog"]
    h, w = cv2.imread(str(paths[0])).shape[:2]
    assert 300 <= h < 450 and 400 <= w < 500
    stamp = paths[0].stat().st_mtime_ns
    synthetic_images(tmp_path, 4)  # generated once, then reused
    assert paths[0].stat().st_mtime_ns == stamp
