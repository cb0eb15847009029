"""Make the PyTorch-exported ONNX fixtures in tests/onnx/ (run by hand; the tests themselves never need PyTorch).

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch onnx numpy onnxscript
    /tmp/torchenv/bin/python tests/make_onnx_fixtures.py

For each model: ``NAME.onnx`` (exported with a dynamic batch dimension) and ``NAME.npz`` with the reference
data PyTorch computes: inputs and outputs at several batch sizes (``x_<n>``, ``out<k>_<n>``); for ``mlp``, the
gradients of ``F.cross_entropy(logits, labels)`` (``grad/<param>``) and the params after each of three
``torch.optim.Adam`` steps (``adam<step>/<param>``) with their losses. Everything is float32 and a few KB.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent / "onnx"
BATCHES = (1, 3, 8)
ADAM = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
ADAM_STEPS = 3


class MLP(nn.Module):
    """The 3-layer MLP of the README: Linear-ReLU-Linear-Tanh-Linear, logits out."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class Activations(nn.Module):
    """Sigmoid, LeakyReLU(0.2), Softmax and LogSoftmax layers; two outputs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 10), nn.Sigmoid(), nn.Linear(10, 10), nn.LeakyReLU(0.2),
                                  nn.Linear(10, 5))
        self.softmax = nn.Softmax(dim=1)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def forward(self, x):
        h = self.body(x)
        return self.softmax(h), self.log_softmax(h)


class Arithmetic(nn.Module):
    """Simple arithmetic on two inputs and one weight: + - * /, neg, exp, log, sum, mean, a matmul."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3) * 0.5)

    def forward(self, x, y):
        z = (x * 2.0 - y) / 3.0 + x.sum(dim=1, keepdim=True)
        s = torch.exp(-z * 0.1) + torch.log(torch.sigmoid(y) + 1.0)
        return (s @ self.w).mean(dim=1, keepdim=True) - s.mean() + 0.5


def export(model, args, path, input_names, output_names, dynamo=False, opset=17, **options):
    dynamic_axes = {n: {0: "N"} for n in input_names + output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("N", min=1)
            shapes = tuple({0: batch} for _ in input_names)  # by position: nn.Sequential's argument is "input"
            program = torch.onnx.export(model, args, dynamo=True, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=shapes, opset_version=18)
            program.save(str(path))
        else:
            torch.onnx.export(model, args, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, **options)
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size} bytes)")


def inputs_at(n: int, count: int, width: int, seed: int):
    rng = np.random.default_rng(seed + n)
    return [rng.standard_normal((n, width)).astype(np.float32) for _ in range(count)]


def save(name: str, data: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    (HERE / f"{name}.npz").write_bytes(buffer.getvalue())
    print(f"wrote tests/onnx/{name}.npz ({len(buffer.getvalue())} bytes)")


def reference(name, model, count, width, seed, outputs):
    data = {}
    with torch.no_grad():
        for n in BATCHES:
            xs = inputs_at(n, count, width, seed)
            outs = model(*map(torch.from_numpy, xs))
            outs = outs if isinstance(outs, tuple) else (outs,)
            for k, x in enumerate(xs):
                data[f"in{k}_{n}"] = x
            for k, out in enumerate(outs):
                data[f"out{k}_{n}"] = out.numpy()
    assert len(outs) == len(outputs)
    return data


def mlp_training(model, data):
    """Gradients of the mean cross-entropy and three Adam steps, on a batch of 8 with integer labels."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=8).astype(np.int64)
    data["train_x"], data["train_labels"] = x, labels
    loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(labels))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    data["grad_loss"] = np.float32(loss.item())
    for (pname, _), g in zip(model.named_parameters(), grads):
        data[f"grad/{pname}"] = g.numpy()
    trained = MLP()
    trained.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(trained.parameters(), **ADAM)
    for step in range(1, ADAM_STEPS + 1):
        opt.zero_grad()
        loss = F.cross_entropy(trained(torch.from_numpy(x)), torch.from_numpy(labels))
        loss.backward()
        opt.step()
        data[f"adam{step}_loss"] = np.float32(loss.item())
        for pname, p in trained.named_parameters():
            data[f"adam{step}/{pname}"] = p.detach().numpy().copy()


def main() -> int:
    HERE.mkdir(exist_ok=True)
    torch.manual_seed(0)
    mlp = MLP().eval()
    x = torch.zeros(2, 4)
    export(mlp, (x,), HERE / "mlp.onnx", ["x"], ["logits"])
    export(mlp, (x,), HERE / "mlp_opset11_ir3.onnx", ["x"], ["logits"], opset=11, keep_initializers_as_inputs=True)
    export(mlp, (x,), HERE / "mlp_dynamo.onnx", ["x"], ["logits"], dynamo=True)
    data = reference("mlp", mlp, 1, 4, 0, ["logits"])
    mlp_training(mlp, data)
    save("mlp", data)

    act = Activations().eval()
    export(act, (torch.zeros(2, 6),), HERE / "activations.onnx", ["x"], ["probs", "log_probs"])
    save("activations", reference("activations", act, 1, 6, 1, ["probs", "log_probs"]))

    arith = Arithmetic().eval()
    export(arith, (torch.zeros(2, 5), torch.zeros(2, 5)), HERE / "arithmetic.onnx", ["x", "y"], ["out"])
    save("arithmetic", reference("arithmetic", arith, 2, 5, 2, ["out"]))
    dynamo_models()
    print(f"torch {torch.__version__}")
    return 0


DYNAMO_MODELS = ("resnet_stack", "depthwise_separable", "text_conv1d", "autoencoder", "gelu_mlp", "mixed")


def dynamo_models() -> None:
    """The models of tests/test_onnx_models.py (which exports them with the TorchScript exporter itself) from the
    dynamo exporter, which needs onnxscript: ``dynamo/NAME.onnx`` and ``dynamo/NAME.npz``, PyTorch's outputs
    ``y_<n>`` on that test's inputs at its batch sizes (LeNet-5 left out: its weights alone are 250 KB)."""
    sys.path.insert(0, str(HERE.parent))
    import test_onnx_models as t

    (HERE / "dynamo").mkdir(exist_ok=True)
    for name in DYNAMO_MODELS:
        make, shape, _ = t.MODELS[name]
        torch.manual_seed(0)
        model = make()
        t.randomize_batch_norms(model)
        model.eval()
        export(model, (torch.randn(2, *shape),), HERE / "dynamo" / f"{name}.onnx", ["x"], ["y"], dynamo=True)
        with torch.no_grad():
            save(f"dynamo/{name}", {f"y_{n}": model(torch.from_numpy(t.inputs(name, n))).numpy() for n in t.BATCHES})


if __name__ == "__main__":
    sys.exit(main())
