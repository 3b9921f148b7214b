"""The package and the `leafwalk` command line give the same answers on the same inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import leafwalk
from conftest import FIXTURES, REPO, write_safetensors


def run(cli, *args) -> dict:
    done = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_inspect_agrees(cli, lenet5, golden_lenet5, tmp_path):
    images = tmp_path / "images.safetensors"
    write_safetensors(images, {"x": golden_lenet5["inputs"][:3]})
    for k, point in enumerate(lenet5.geometry(golden_lenet5["inputs"][:3])):
        (summary,) = run(cli, "inspect", "--model", FIXTURES / "lenet5.onnx", "--image", f"{images}#{k}", "--json")
        assert summary["rank"] == point.rank
        assert summary["trace_g"] == pytest.approx(point.trace, rel=1e-9)
        assert np.allclose(summary["eigenvalues_g"], point.eigenvalues, rtol=1e-9, atol=1e-15)


def test_path_agrees(cli, mnist_cnn, golden_lenet5, tmp_path):
    images = tmp_path / "pair.safetensors"
    write_safetensors(images, {"x": golden_lenet5["inputs"][:2]})
    out = tmp_path / "path"
    summary = run(
        cli, "path", "--from", f"{images}#0", "--to", f"{images}#1", "--flip-target", "--json", "--out", out
    )
    ours = mnist_cnn.path(golden_lenet5["inputs"][0], golden_lenet5["inputs"][1], flip_target=True)
    assert summary["ending"] == ours.ending
    assert summary["steps"] == len(ours.frames) - 1
    assert summary["jacobian_evals"] == ours.jacobian_evals
    assert summary["final_distance"] == pytest.approx(ours.records[-1]["distance"], rel=1e-9)


def test_images_read_as_the_cli_reads_them(cli, lenet5):
    png = REPO / "models" / "samples" / "mnist-7.png"
    pixels = leafwalk.load_image(png, lenet5)
    assert pixels.shape == (1, 28, 28) and pixels.dtype == np.float32
    (summary,) = run(cli, "inspect", "--model", FIXTURES / "lenet5.onnx", "--image", png, "--json")
    assert np.allclose(np.exp(lenet5.log_probs(pixels)), summary["probabilities"], rtol=1e-5, atol=1e-7)


def test_the_example_runs(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "onnx_geometry_and_path.py"
    out = tmp_path / "path.gif"
    done = subprocess.run([sys.executable, str(example), str(FIXTURES / "lenet5.onnx"), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "reached_class" in done.stdout and out.read_bytes()[:4] == b"GIF8"
