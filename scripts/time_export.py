"""Timing of the exported model (a measurement, not a test): run from a folder holding
competitions/, data/<comp>/ and an export, e.g. after `make demo` and `make export`.

    python scripts/time_export.py exports/digits-demo-<run> [--threads 1]

Prints: the standalone predict.py on one image, cold (process start -> CSV written) and per image
warm (in one process, over a folder of 100); `kagglecv predict` (predict/new_images.py)
the same way; ONNX Runtime vs PyTorch eager images/s on the CPU for the exported ensemble.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cold(cmd: list[str], env: dict, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def throughput(run, x: np.ndarray, seconds: float = 3.0) -> float:
    run(x)  # warm-up
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        run(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    spec = json.loads((args.export / "model.json").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "KAGGLECV_NO_PROGRESS": "1"}
    test = sorted((Path("data") / spec["competition"] / "test").glob("*.*"))
    tmp = Path(tempfile.mkdtemp())
    for n in (1, 100):
        (tmp / str(n)).mkdir()
        for p in test[:n]:
            shutil.copy(p, tmp / str(n) / p.name)
    script = [sys.executable, "-I", str(args.export / "predict.py")]
    one = cold([*script, str(tmp / "1"), "--out", str(tmp / "o.csv"), "--device", "cpu"], env)
    infer = (
        "import sys; from pathlib import Path; from kagglecv.core.competition import load_competition; "
        "from kagglecv.predict.new_images import predict_images; "
        f"predict_images(load_competition({spec['competition']!r}), Path('runs/{spec['competition']}/{spec['run']}'), "
        f"[sys.argv[1]], out=Path({str(tmp / 'k.csv')!r}))"
    )
    k_one = cold([sys.executable, "-c", infer, str(tmp / "1")], env)

    import onnxruntime as ort
    import torch

    from kagglecv.core.competition import load_competition
    from kagglecv.predict.new_images import expand_inputs, load_ensemble, predict_paths

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.export))
    import predict as standalone  # the exported script, as a module

    spec, models = standalone.load_models(args.export, "cpu")
    warm = min(timed(lambda: standalone.predict_folder(tmp / "100", spec, models)) for _ in range(3))
    print(
        f"standalone predict.py: 1 image cold {one:.2f} s; warm {warm / 100 * 1000:.2f} ms/image (folder of 100)"
    )
    ens = load_ensemble(
        load_competition(spec["competition"]), Path("runs") / spec["competition"] / spec["run"]
    )
    paths = expand_inputs([str(tmp / "100")])
    k_warm = min(timed(lambda: predict_paths(ens, paths)) for _ in range(3))
    print(
        f"kagglecv predict:      1 image cold {k_one:.2f} s; warm {k_warm / 100 * 1000:.2f} ms/image (folder of 100)"
    )

    size = spec["img_size"]
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    torch_ips = throughput(lambda x: standalone.predict(spec, models, x), pixels)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.export / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    nchw = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32)
    ort_ips = throughput(lambda x: session.run(None, {"pixels": x}), nchw)
    print(
        f"CPU, {args.threads} thread(s), batch {args.batch}, {len(models)} folds, TTA {spec['tta'] or 'none'}: "
        f"PyTorch eager {torch_ips:.0f} images/s, ONNX Runtime {ort_ips:.0f} images/s ({ort_ips / torch_ips:.2f}x)"
    )
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
