"""The package against PyTorch's float64 golden values (copied into fixtures/): every way of
loading a PyTorch model gives the same log p, J and G."""

from __future__ import annotations

import numpy as np
import pytest

import leafwalk
from conftest import FIXTURES, read_safetensors


def check_against_golden(model: leafwalk.Model, golden) -> None:
    x = golden["inputs"]
    log_probs, jacobian = model.log_probs_and_jacobian(x)
    assert np.abs(log_probs - golden["log_probs"]).max() <= 1e-5
    assert np.abs(jacobian - golden["jacobian"]).max() <= 1e-4 * np.abs(golden["jacobian"]).max()
    for point, trace, eigenvalues in zip(model.geometry(x), golden["trace_g"], golden["eig_g"]):
        assert abs(point.trace - trace) <= 1e-4 * trace
        ours = np.sort(point.eigenvalues)[::-1]
        theirs = np.sort(eigenvalues)[::-1]
        assert np.abs(ours - theirs).max() <= 1e-4 * theirs[0]


@pytest.mark.parametrize(
    "load",
    [
        lambda: leafwalk.load(FIXTURES / "lenet5.onnx"),
        lambda: leafwalk.load(FIXTURES / "lenet5.safetensors", arch="lenet5", mean=0, std=1),
        lambda: leafwalk.load(FIXTURES / "lenet5.safetensors", layers=FIXTURES / "lenet5.layers.json"),
    ],
    ids=["onnx", "state-dict-arch", "state-dict-layers"],
)
def test_lenet5_matches_pytorch(load, golden_lenet5):
    check_against_golden(load(), golden_lenet5)


def test_dynamo_export_with_external_data_matches_pytorch():
    model = leafwalk.load(FIXTURES / "resnet-mini.dynamo.onnx")
    check_against_golden(model, read_safetensors(FIXTURES / "resnet-mini.golden.safetensors"))


def test_model_describes_itself(lenet5):
    assert lenet5.input_shape == (1, 28, 28)
    assert lenet5.classes == [str(k) for k in range(10)]
    assert lenet5.mean == [0.0] and lenet5.std == [1.0]
    assert "custom" in repr(lenet5)
