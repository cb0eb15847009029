"""Real models through ``graphc import`` (DESIGN section 16): small PyTorch networks of sections 14 and 15 (LeNet-5, a
ResNet basic-block stack, a depthwise-separable block, a Conv1d text classifier, a conv autoencoder, an MLP with
GELU and LayerNorm, and one of concat, slice, pow, sqrt, clamp and min/max), exported here with
``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, dynamic batch ``N``), imported and compiled with
the real commands, and ``predict`` equal to torch at batch sizes 1, 3 and 64. The dynamo exporter needs onnxscript,
which the test extra does not install: its exports of the same models are stored in tests/onnx/dynamo/ with
PyTorch's outputs (tests/make_onnx_fixtures.py). Each model is exported once per module (a module-scope
fixture); BatchNorm is folded into the convolutions by exporting in evaluation mode. Then the imported spec goes
back out with ``graphc export`` and onnxruntime computes what ``predict`` computes.
"""

from __future__ import annotations

import importlib.util
import uuid
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from graphc.cli import main

pytestmark = pytest.mark.unformatted

BATCHES = (1, 3, 64)
RTOL, ATOL = 1e-4, 2e-5  # float32: sums of a few hundred products


class LeNet5(nn.Module):
    """LeNet-5 with the flatten PyTorch code often writes: x.view(x.size(0), -1), shape arithmetic in ONNX."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def depthwise_separable():
    return nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 6 * 6, 4))


class TextConv1d(nn.Module):
    """A Conv1d text classifier on float features (N, 16 channels, 20 positions): max over time."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(16, 24, 3, padding=1)
        self.conv2 = nn.Conv1d(24, 24, 3, padding=2, dilation=2)
        self.drop, self.fc = nn.Dropout(0.5), nn.Linear(24, 3)

    def forward(self, x):
        x = nn.functional.max_pool1d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x)).amax(dim=2)
        return self.fc(self.drop(x))


def autoencoder():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid())


def gelu_mlp():
    return nn.Sequential(nn.Linear(10, 32), nn.LayerNorm(32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 32),
                         nn.GELU(approximate="tanh"), nn.LayerNorm(32, eps=1e-6), nn.Linear(32, 4))


class Mixed(nn.Module):
    """concat, slice, pow, sqrt, clamp, min and max, softmax over the features."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)

    def forward(self, x):
        h = self.fc(x)
        a, b = h[:, :4], h[:, 4:]
        c = torch.cat([torch.sqrt(a * a + 1.0), b.pow(2), torch.clamp(b, -0.5, 0.5)], dim=1)
        m = c.amax(dim=1, keepdim=True) - c.amin(dim=1, keepdim=True)
        return torch.softmax(c[:, ::2] / m, dim=1)


MODELS = {  # name -> (the module, one input's shape without the batch, opset)
    "lenet5": (LeNet5, (1, 28, 28), 17),
    "resnet_stack": (ResNetStack, (3, 16, 16), 17),
    "depthwise_separable": (depthwise_separable, (8, 12, 12), 17),
    "text_conv1d": (TextConv1d, (16, 20), 17),
    "autoencoder": (autoencoder, (1, 16, 16), 17),
    "gelu_mlp": (gelu_mlp, (10,), 20),  # Gelu is an ONNX op from opset 20
    "gelu_mlp_opset17": (gelu_mlp, (10,), 17),  # GELU as Erf, LayerNorm as LayerNormalization
    "gelu_mlp_opset13": (gelu_mlp, (10,), 13),  # LayerNorm as ReduceMean, Sub, Pow, Sqrt, Div
    "mixed": (Mixed, (6,), 17),
}


def randomize_batch_norms(model):
    """Running statistics and affine parameters that are not the identity, so that the folding shows."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"onnx_models_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every model exported once: ``name -> (the torch module, the .onnx path)``."""
    folder = tmp_path_factory.mktemp("onnx_models")
    out = {}
    for name, (make, shape, opset) in MODELS.items():
        torch.manual_seed(0)
        model = make()
        randomize_batch_norms(model)
        model.eval()
        path = folder / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
            torch.onnx.export(model, (torch.randn(2, *shape),), str(path), dynamo=False, opset_version=opset,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        out[name] = (model, path)
    return out


@pytest.fixture(scope="module")
def imported(exported):
    """``graphc import`` then ``graphc compile``, once per model: ``name -> (spec path, loaded module)``."""
    cache = {}

    def get(name):
        if name not in cache:
            path = exported[name][1]
            spec, module = path.with_suffix(".toml"), path.with_name(f"{name}_model.py")
            assert main(["import", str(path), "-o", str(spec)]) == 0
            assert main(["compile", str(spec), "-o", str(module)]) == 0
            cache[name] = (spec, load_module(module))
        return cache[name]
    return get


def inputs(name: str, n: int) -> np.ndarray:
    shape = MODELS[name][1]
    return np.random.default_rng(n).standard_normal((n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_imported_model_predicts_what_torch_computes(name, exported, imported):
    model, _ = exported[name]
    spec, mod = imported(name)
    assert mod.INPUTS == ("x",)
    params = mod.init_params()
    for n in BATCHES:
        x = inputs(name, n)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = mod.predict(params, x)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{name} at batch {n}")


def test_shape_arithmetic_folds_and_the_batch_stays_named(exported, imported):
    """LeNet's x.view(x.size(0), -1) is Shape, Gather, Unsqueeze, Concat and Reshape in ONNX: the spec has one
    reshape to (N, -1), and no shape op; BatchNorm is gone into the convolutions' weights."""
    ops = {n.op_type for n in onnx.load(str(exported["lenet5"][1])).graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= ops
    text = imported("lenet5")[0].read_text()
    assert 'x = ["N", 1, 28, 28]' in text and "reshape(" in text and 'shape=(N, -1)' in text
    assert "conv2d(" in text and "max_pool2d(" in text and "avg_pool2d(" in text
    resnet = imported("resnet_stack")[0].read_text()
    assert "adaptive_avg_pool2d(" in resnet and "batch" not in resnet.lower().replace("batches", "")
    assert "groups=8" in imported("depthwise_separable")[0].read_text()
    assert "clip(" in imported("depthwise_separable")[0].read_text()
    assert "conv1d(" in imported("text_conv1d")[0].read_text()
    assert "conv_transpose2d(" in imported("autoencoder")[0].read_text()
    assert "gelu(" in imported("gelu_mlp")[0].read_text() and "layer_norm(" in imported("gelu_mlp")[0].read_text()
    assert "erf(" in imported("gelu_mlp_opset17")[0].read_text()
    assert "sqrt(" in imported("gelu_mlp_opset13")[0].read_text()


DYNAMO = Path(__file__).parent / "onnx" / "dynamo"  # made by tests/make_onnx_fixtures.py (dynamo_models)


@pytest.mark.parametrize("name", sorted(p.stem for p in DYNAMO.glob("*.onnx")))
def test_dynamo_exports_predict_what_torch_computed(name, tmp_path):
    """The same models from the dynamo exporter (opset 18, stored: it needs onnxscript), with PyTorch's outputs."""
    spec, module = tmp_path / f"{name}.toml", tmp_path / f"{name}.py"
    assert main(["import", str(DYNAMO / f"{name}.onnx"), "-o", str(spec)]) == 0
    assert main(["compile", str(spec), "-o", str(module)]) == 0
    mod = load_module(module)
    params = mod.init_params()
    with np.load(DYNAMO / f"{name}.npz") as want:
        for n in BATCHES:
            np.testing.assert_allclose(mod.predict(params, inputs(name, n)), want[f"y_{n}"], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} at batch {n}")


@pytest.mark.parametrize("name", ["lenet5", "resnet_stack", "depthwise_separable", "text_conv1d", "autoencoder",
                                  "gelu_mlp", "mixed"])
def test_imported_model_exports_back_and_onnxruntime_agrees(name, imported, tmp_path):
    spec, mod = imported(name)
    out = tmp_path / f"{name}_back.onnx"
    assert main(["export", str(spec), "-o", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    params = mod.init_params()
    for n in (1, 3):
        x = inputs(name, n)
        (got,) = session.run(None, {"x": x})
        np.testing.assert_allclose(got, mod.predict(params, x), rtol=RTOL, atol=ATOL, err_msg=f"{name} at {n}")


@pytest.mark.parametrize("name", ["lenet5", "resnet_stack"])
def test_gradients_after_adding_a_loss_match_torch(name, exported, imported, tmp_path):
    """The imported spec's commented loss switched on: value_and_grad equals the gradients of torch's
    F.cross_entropy with respect to the exported weights (BatchNorm folded: the ResNet's in evaluation form)."""
    model, _ = exported[name]
    spec = tmp_path / f"{name}.toml"
    text = imported(name)[0].read_text()
    for commented in ["# labels = ", '# loss = "cross_entropy', '# loss = "loss"']:
        assert commented in text
        text = text.replace(commented, commented[2:])
    spec.write_text(text)
    (tmp_path / f"{name}.npz").write_bytes(imported(name)[0].with_suffix(".npz").read_bytes())
    module = tmp_path / f"{name}_train.py"
    assert main(["compile", str(spec), "-o", str(module)]) == 0
    mod = load_module(module)
    x = inputs(name, 3)
    labels = np.array([0, 2, 1])
    loss, grads = mod.value_and_grad(mod.init_params(), x, labels)
    if name == "lenet5":  # no BatchNorm: the ONNX weights are torch's parameters
        torch_loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(labels))
        torch_grads = dict(zip([k for k, _ in model.named_parameters()],
                               torch.autograd.grad(torch_loss, list(model.parameters()))))
        np.testing.assert_allclose(loss, torch_loss.item(), rtol=1e-5)
        for k, g in torch_grads.items():
            np.testing.assert_allclose(grads[k.replace(".", "_")], g.numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
    else:  # the convolutions' weights are BatchNorm-folded, not torch's parameters: the linear layer's gradient
        torch_loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(labels))
        (g_fc,) = torch.autograd.grad(torch_loss, [model.fc.weight])
        np.testing.assert_allclose(loss, torch_loss.item(), rtol=1e-5)
        np.testing.assert_allclose(grads["fc_weight"], g_fc.numpy(), rtol=1e-3, atol=1e-5)


# ---- section 16: a model exported in training mode (BatchNormalization and Dropout kept), a tiny GPT ----------

class TinyGPT(nn.Module):
    """Token and position embeddings, one causal self-attention of 2 heads (scaled_dot_product_attention), a head."""

    def __init__(self, vocab=11, width=8, context=5):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.qkv, self.head = nn.Linear(width, 3 * width), nn.Linear(width, vocab)

    def forward(self, ids):
        n, t = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(t))
        q, k, v = (z.reshape(n, t, 2, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + a.transpose(1, 2).reshape(n, t, -1))


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn2 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.3)
        self.fc, self.bn1, self.drop = nn.Linear(64, 6), nn.BatchNorm1d(6, eps=1e-3), nn.Dropout(0.25)

    def forward(self, x):
        h = torch.relu(self.bn2(self.conv(x)))
        return self.bn1(self.drop(self.fc(torch.flatten(h, 1))))


def export_torch(model, example, path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **options)


@pytest.fixture(scope="module")
def section16(tmp_path_factory):
    """BatchNormNet exported in training mode and in evaluation mode, TinyGPT: ``name -> (model, spec, module)``."""
    folder, out = tmp_path_factory.mktemp("section16"), {}
    torch.manual_seed(0)
    bn = BatchNormNet()
    randomize_batch_norms(bn)
    for m in (bn.bn1,):
        with torch.no_grad():
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    gpt = TinyGPT().eval()
    cases = {"bn_training": (bn, torch.randn(4, 2, 4, 4), {"training": torch.onnx.TrainingMode.TRAINING}),
             "bn_eval": (bn, torch.randn(4, 2, 4, 4), {}), "tiny_gpt": (gpt, torch.randint(0, 11, (2, 5)), {})}
    for name, (model, example, options) in cases.items():
        path = folder / f"{name}.onnx"
        export_torch(model, example, path, **options)
        model.eval()
        spec, module = path.with_suffix(".toml"), path.with_name(f"{name}_model.py")
        assert main(["import", str(path), "-o", str(spec)]) == 0
        assert main(["compile", str(spec), "-o", str(module)]) == 0
        out[name] = (model, path, spec, load_module(module))
    return out


@pytest.mark.parametrize("name", ["bn_training", "bn_eval", "tiny_gpt"])
def test_section_16_models_predict_what_torch_computes_in_evaluation_mode(name, section16):
    model, path, spec, mod = section16[name]
    params = mod.init_params()
    rng = np.random.default_rng(3)
    for n in (1, 3):
        x = rng.integers(0, 11, (n, 5)) if name == "tiny_gpt" else rng.standard_normal((n, 2, 4, 4)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(mod.predict(params, x), want, rtol=RTOL, atol=ATOL, err_msg=f"{name} at {n}")


def test_training_mode_export_keeps_batch_norm_with_frozen_running_statistics(section16):
    ops = {n.op_type for n in onnx.load(str(section16["bn_training"][1])).graph.node}
    assert {"BatchNormalization", "Dropout"} <= ops
    text = section16["bn_training"][2].read_text()
    assert text.count("batch_norm(") == 2 and text.count("trainable = false") == 4 and "dropout(" in text
    assert "momentum=0.3" in text and "eps=0.0010000000474974513" in text
    frozen = sorted(line.split()[0] for line in text.splitlines() if "trainable = false" in line)
    assert frozen == ["bn1_running_mean", "bn1_running_var", "bn2_running_mean", "bn2_running_var"]
    gpt = section16["tiny_gpt"][2].read_text()
    assert 'dtype = "int64"' in gpt and "embedding(" in gpt
