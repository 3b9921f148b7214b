"""Checks leafwalk's reading of an ONNX classifier against ONNX's own semantics: class
probabilities of random images from onnx's reference evaluator (or onnxruntime when installed)
and from `leafwalk predict`, compared.

  python scripts/check_onnx.py net.onnx [--images 8] [--leafwalk target/release/leafwalk] [--tolerance 1e-4]

Needs numpy, onnx and safetensors (pip install numpy onnx safetensors). Prints the largest
probability difference; exits 1 when it is above the tolerance."""
import argparse, json, os, subprocess, sys, tempfile

import numpy as np
import onnx
from safetensors.numpy import save_file


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--leafwalk", default="target/release/leafwalk")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    model = onnx.load(args.model)
    weights = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in weights)
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:]
    pixels = np.random.default_rng(0).uniform(0, 1, (args.images, *dims)).astype(np.float32)
    try:
        import onnxruntime
        session = onnxruntime.InferenceSession(args.model)
        run = lambda x: session.run(None, {graph_input.name: x})[0]
    except ImportError:
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(args.model)
        run = lambda x: evaluator.run(None, {graph_input.name: x})[0]
    expected = softmax(np.concatenate([run(x[None]) for x in pixels]).astype(np.float64))

    with tempfile.TemporaryDirectory() as folder:
        images = os.path.join(folder, "images.safetensors")
        save_file({"pixels": pixels}, images)
        result = subprocess.run([args.leafwalk, "predict", images, "--model", args.model, "--json"],
                                capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"leafwalk predict failed: {result.stderr.strip()}")
    found = np.array([row["probabilities"] for row in json.loads(result.stdout)])
    gap = float(np.abs(found - expected).max())
    print(json.dumps({"model": args.model, "images": args.images, "max_probability_gap": gap,
                      "tolerance": args.tolerance, "agrees": gap <= args.tolerance}))
    sys.exit(0 if gap <= args.tolerance else 1)


if __name__ == "__main__":
    main()
