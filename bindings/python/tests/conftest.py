"""Shared helpers: fixture files, a dependency-free safetensors reader/writer (the format is a
JSON header and raw little-endian bytes), the repository's shipped model and its CLI binary."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[3]
DTYPES = {"F64": np.float64, "F32": np.float32, "U8": np.uint8, "I64": np.int64}


def read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return out


def write_safetensors(path: Path, tensors: Dict[str, np.ndarray]) -> None:
    header, offset, chunks = {}, 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        raw = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


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


@pytest.fixture(scope="session")
def golden_lenet5() -> Dict[str, np.ndarray]:
    return read_safetensors(FIXTURES / "lenet5.golden.safetensors")


@pytest.fixture(scope="session")
def lenet5():
    import leafwalk

    return leafwalk.load(FIXTURES / "lenet5.onnx")


@pytest.fixture(scope="session")
def mnist_cnn():
    """The repository's shipped default model (a partially trained mnist-cnn)."""
    import leafwalk

    path = REPO / "models" / "mnist-cnn.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not here (the package is tested inside its repository)")
    return leafwalk.load(path)


@pytest.fixture(scope="session")
def cli() -> Path:
    """The `leafwalk` binary the README's test command builds (`cargo test --release`)."""
    binary = Path(os.environ.get("LEAFWALK_BIN", REPO / "target" / "release" / "leafwalk"))
    if not binary.is_file():
        pytest.skip(f"no CLI binary at {binary}: build it with `cargo build --release` or set LEAFWALK_BIN")
    return binary
