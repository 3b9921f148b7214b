"""From a PyTorch model to its data leaf, in a notebook or a script.

1. export your classifier from PyTorch to ONNX (either exporter):

       torch.onnx.export(model.eval(), torch.zeros(1, 1, 28, 28), "lenet5.onnx", dynamo=True)

2. load it in leafwalk, compute G on a batch, walk a path between two images, save a GIF.

Run from the repository root (it uses the test fixtures' LeNet-5 and sample digits):

    python bindings/python/examples/onnx_geometry_and_path.py [MODEL.onnx] [OUT.gif]
"""

import sys
from pathlib import Path

import numpy as np

import leafwalk

ROOT = Path(__file__).resolve().parents[3]


def main() -> None:
    onnx = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/lenet5.onnx"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("path-1-7.gif")
    model = leafwalk.load(onnx)  # mean=…, std=… if the network expects normalised input
    print(model)

    one = leafwalk.load_image(ROOT / "models/samples/mnist-1.png", model)  # [1, 28, 28] in [0, 1]
    seven = leafwalk.load_image(ROOT / "models/samples/mnist-7.png", model)
    batch = np.stack([one, seven])  # [2, 1, 28, 28], pixels in [0, 1]

    # G at each image, from J [2, 10, 784]: never the 784×784 matrix.
    for name, point in zip(["one", "seven"], model.geometry(batch)):
        print(f"{name}: trace G = {point.trace:.4g}, rank {point.rank}, top eigenvalues {point.eigenvalues[:3]}")

    # The data leaf from the 1 toward the 7, until the model sees a 7.
    path = model.path(one, seven, flip_target=True, progress=lambda pair, step, distance, _: None)
    last = path.records[-1]
    print(f"path: {path.ending} after {len(path.frames) - 1} steps, distance {last['distance']:.2f}, "
          f"predicts {model.classes[last['prediction']]} ({last['probability']:.2f})")
    path.save_gif(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
