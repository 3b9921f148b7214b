"""The Ray example on a one-machine Ray cluster (Ray 2.x no longer has a local mode): shards
mapped as tasks and merged give the unsharded run's report (skipped, and reported as skipped,
where Ray is not installed)."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")


def write_idx(path: Path, array: np.ndarray) -> None:
    kind = 0x0803 if array.ndim == 3 else 0x0801
    header = struct.pack(">I", kind) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def tiny_mnist(root: Path) -> None:
    """60 training and 20 test 'digits': a bright band whose position is the label."""
    (root / "mnist").mkdir(parents=True)
    for prefix, count in [("train", 60), ("t10k", 20)]:
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        flat = images.reshape(count, 784)
        for k, label in enumerate(labels):
            flat[k, label * 78 : (label + 1) * 78] = 255
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte", labels)


def test_shards_on_ray_merge_into_the_unsharded_report(cli, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "ray_eval_ood", Path(__file__).resolve().parents[1] / "examples" / "ray_eval_ood.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    data = tmp_path / "data"
    tiny_mnist(data)
    args = ["--ood", "noise:uniform,transform:invert", "--scores", "msp,energy,leaf-distance", "--limit", "20",
            "--max-steps", "10", "--anchors", "1"]
    whole = tmp_path / "whole"
    subprocess.run([str(cli), "--data-root", str(data), "eval-ood", *args, "--out", str(whole)], check=True,
                   capture_output=True)
    ray.init(include_dashboard=False, num_cpus=2)
    try:
        example.eval_ood_on_cluster(str(cli), str(data), 4, args, tmp_path / "merged")
    finally:
        ray.shutdown()
    assert (tmp_path / "merged" / "eval-ood.json").read_text() == (whole / "eval-ood.json").read_text()
