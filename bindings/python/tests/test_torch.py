"""Against torch.func.jacrev on a network built in PyTorch, when torch is installed (skipped,
and reported as skipped, otherwise)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import leafwalk
from conftest import write_safetensors

torch = pytest.importorskip("torch")


def test_jacobian_matches_jacrev(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.GELU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 14 * 14, 10),
    ).double()
    write_safetensors(tmp_path / "net.safetensors", {k: v.numpy() for k, v in net.state_dict().items()})
    layers = {
        "input": [1, 28, 28],
        "layers": [
            {"name": "0", "type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "1", "type": "GELU"},
            {"name": "2", "type": "MaxPool2d", "kernel_size": 2},
            {"name": "3", "type": "Flatten"},
            {"name": "4", "type": "Linear", "in_features": 784, "out_features": 10},
        ],
    }
    (tmp_path / "net.json").write_text(json.dumps(layers))
    model = leafwalk.load(tmp_path / "net.safetensors", layers=tmp_path / "net.json")
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def log_probs(image):
        return torch.log_softmax(net(image[None])[0], dim=0)

    expected = torch.stack([torch.func.jacrev(log_probs)(image).reshape(10, -1) for image in x]).detach().numpy()
    ours = model.jacobian(x.numpy())
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()
