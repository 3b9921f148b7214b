"""The Ray example on a one-machine Ray cluster (Ray 2.x no longer has a local mode): shards
mapped as tasks and merged give the unsharded run's report (skipped, and reported as skipped,
where Ray is not installed)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, tiny_mnist

ray = pytest.importorskip("ray")


def test_shards_on_ray_merge_into_the_unsharded_report(cli, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "ray_shards", Path(__file__).resolve().parents[1] / "examples" / "ray_shards.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    data = tmp_path / "data"
    tiny_mnist(data)
    # The shipped model by its full path: the shards run in Ray's workers, whose folder is theirs.
    args = ["--model", str(REPO / "models" / "mnist-cnn.safetensors"), "--ood", "noise:uniform,transform:invert",
            "--scores", "msp,energy,leaf-distance", "--limit", "20", "--max-steps", "10", "--anchors", "1"]
    whole = tmp_path / "whole"
    subprocess.run([str(cli), "--data-root", str(data), "eval-ood", *args, "--out", str(whole)], check=True,
                   capture_output=True)
    ray.init(include_dashboard=False, num_cpus=2)
    try:
        example.run_on_cluster(str(cli), str(data), "eval-ood", 4, args, tmp_path / "merged")
    finally:
        ray.shutdown()
    assert (tmp_path / "merged" / "eval-ood.json").read_text() == (whole / "eval-ood.json").read_text()
