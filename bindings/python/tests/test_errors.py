"""Bad input raises LeafwalkError with one line naming the file or the argument at fault."""

from __future__ import annotations

import numpy as np
import pytest

import leafwalk
from conftest import FIXTURES


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_missing_and_corrupted_files(tmp_path):
    with pytest.raises(leafwalk.LeafwalkError) as missing:
        leafwalk.load(tmp_path / "absent.onnx")
    assert "absent.onnx" in one_line(missing)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((FIXTURES / "lenet5.onnx").read_bytes()[:1000])
    with pytest.raises(leafwalk.LeafwalkError) as truncated:
        leafwalk.load(broken)
    assert "broken.onnx" in one_line(truncated)
    with pytest.raises(leafwalk.LeafwalkError) as unknown:
        leafwalk.load(FIXTURES / "lenet5.safetensors", arch="lenet7")
    assert "lenet7" in one_line(unknown)


def test_wrong_shapes_and_names(lenet5):
    with pytest.raises(leafwalk.LeafwalkError) as shape:
        lenet5.jacobian(np.zeros((2, 3, 28, 28)))
    assert "[2, 3, 28, 28]" in one_line(shape)
    x = np.full((1, 28, 28), 0.5)
    for call, word in [
        (lambda: lenet5.path(x, x, integrator="rk4"), "rk4"),
        (lambda: lenet5.path(x, x, leaf="other"), "other"),
        (lambda: lenet5.path(x, x, step=-1.0), "step"),
        (lambda: lenet5.project(x, x, "sideways"), "sideways"),
        (lambda: lenet5.ood_scores(x, reference=(x, [0]), scores=["bogus"]), "bogus"),
        (lambda: lenet5.reference(x, [10]), "label"),
        (lambda: lenet5.walk(np.stack([x, x])), "one image"),
    ]:
        with pytest.raises(leafwalk.LeafwalkError) as error:
            call()
        assert word in one_line(error)


def test_non_finite_pixels_are_refused(lenet5):
    x = np.full((1, 28, 28), 0.5, dtype=np.float32)
    x[0, 3, 4] = np.nan
    with pytest.raises(leafwalk.LeafwalkError) as error:
        lenet5.jacobian(x)
    assert "non-finite" in one_line(error)
