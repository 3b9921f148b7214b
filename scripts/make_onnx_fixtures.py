"""Writes the ONNX test fixtures beyond shared/models' (tests/fixtures/onnx-*): run with the
PyTorch reference environment (torch, onnx, safetensors):

  ~/.venv-ref/bin/python scripts/make_onnx_fixtures.py tests/fixtures

- `onnx-zoo.onnx`: a small CNN using the rest of the vocabulary PyTorch users export — GELU,
  SiLU, Softplus(β=2, threshold=10), LeakyReLU, ELU, Sigmoid, a grouped and a dilated strided
  convolution, max-pooling with padding and ceil_mode, average pooling without the padding in
  its divisor, a batch norm on a vector (not folded), a bias-free linear layer, arithmetic with
  constants and `x.view(x.size(0), -1)` — from the TorchScript exporter (opset 17), with
  `onnx-zoo.golden.safetensors` (`inputs`, float64 `log_probs` and `jacobian` as in
  shared/models).
- `onnx-patterns.onnx`: a graph written node by node in the dynamo exporter's spelling, which
  this machine's PyTorch cannot export without onnxscript: GELU as Mul(x, 1/√2) → Erf → Add 1 →
  Mul(0.5·x, ·), Softplus(β=2, threshold=10) as Greater/Where, a linear layer as MatMul + Add,
  ReduceMean over axes given as an input, Reshape; with `onnx-patterns.golden.safetensors`
  (`inputs`, `logits` from onnx's reference evaluator)."""
import os, sys

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper, numpy_helper, TensorProto
from onnx.reference import ReferenceEvaluator
from safetensors.numpy import save_file


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, stride=2, groups=4)
        self.c3 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, stride=2, padding=1, count_include_pad=False)
        self.fc1 = nn.Linear(12 * 3 * 3, 32, bias=False)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.gelu(self.c1(x * 2.0 - 1.0))
        x = F.silu(self.c2(x))
        x = self.pool(F.leaky_relu(x, 0.1))
        x = F.elu(self.c3(x), alpha=0.7)
        x = self.avg(x)
        x = x.view(x.size(0), -1)
        x = F.softplus(self.bn(self.fc1(x)), beta=2.0, threshold=10.0)
        x = torch.sigmoid(self.fc2(x)) / 0.5
        return self.head(x)


def zoo(folder):
    torch.manual_seed(0)
    model = Zoo().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    inputs = torch.rand(3, 1, 16, 16)
    torch.onnx.export(model, inputs[:1], os.path.join(folder, "onnx-zoo.onnx"), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    double = model.double()
    log_probs = F.log_softmax(double(inputs.double()), 1)
    jacobian = torch.stack([
        torch.autograd.functional.jacobian(lambda x: F.log_softmax(double(x[None]), 1)[0], inputs[b].double()).reshape(10, -1)
        for b in range(len(inputs))
    ])
    save_file({"inputs": inputs.numpy(), "log_probs": log_probs.detach().numpy(), "jacobian": jacobian.numpy()},
              os.path.join(folder, "onnx-zoo.golden.safetensors"))


def patterns(folder):
    rng = np.random.default_rng(0)
    const = lambda name, value: numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
    inits = [
        const("w1", rng.normal(0, 0.5, (6, 2, 3, 3))), const("b1", rng.normal(0, 0.1, 6)),
        const("inv_sqrt2", 0.70710677), const("one", 1.0), const("half", 0.5),
        const("beta", 2.0), const("threshold", 10.0),
        numpy_helper.from_array(np.array([-1, -2], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "shape"),
        const("w2", rng.normal(0, 0.5, (6, 10))), const("b2", rng.normal(0, 0.1, 10)),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c"], name="node_conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        # GELU, the dynamo spelling.
        n("Mul", ["c", "half"], ["c_half"], name="node_mul_half"),
        n("Mul", ["c", "inv_sqrt2"], ["c_scaled"], name="node_mul_scaled"),
        n("Erf", ["c_scaled"], ["c_erf"], name="node_erf"),
        n("Add", ["c_erf", "one"], ["c_plus"], name="node_add_one"),
        n("Mul", ["c_half", "c_plus"], ["g"], name="node_gelu"),
        # Softplus(β=2, threshold=10), the dynamo spelling.
        n("Mul", ["g", "beta"], ["g_beta"], name="node_mul_beta"),
        n("Softplus", ["g_beta"], ["sp"], name="node_softplus"),
        n("Div", ["sp", "beta"], ["sp_beta"], name="node_div_beta"),
        n("Greater", ["g_beta", "threshold"], ["above"], name="node_gt"),
        n("Where", ["above", "g", "sp_beta"], ["s"], name="node_where"),
        n("ReduceMean", ["s", "axes"], ["m"], name="node_mean", keepdims=1),
        n("Reshape", ["m", "shape"], ["v"], name="node_view"),
        n("MatMul", ["v", "w2"], ["mm"], name="node_matmul"),
        n("Add", ["mm", "b2"], ["logits"], name="node_bias"),
    ]
    graph = helper.make_graph(
        nodes, "patterns",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="leafwalk fixtures")
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(folder, "onnx-patterns.onnx"))
    inputs = rng.uniform(0, 1, (3, 1, 2, 8, 8)).astype(np.float32)
    evaluator = ReferenceEvaluator(model)
    logits = np.concatenate([evaluator.run(None, {"x": x})[0] for x in inputs])
    save_file({"inputs": inputs[:, 0], "logits": logits}, os.path.join(folder, "onnx-patterns.golden.safetensors"))


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    zoo(folder)
    patterns(folder)
