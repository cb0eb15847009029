"""graphc import and gc.from_onnx: PyTorch-exported models (tests/onnx/, made by tests/make_onnx_fixtures.py;
PyTorch is not needed here), the spec text, hand-made ONNX graphs for the details of section 12, and bad input:
one line, exit 2, nothing written."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import graphc as gc
from graphc.onnx import importer, spec_writer
from graphc.cli import main
from graphc.spec import load_spec

pytestmark = pytest.mark.unformatted

FIXTURES = Path(__file__).parent / "onnx"
BATCHES = (1, 3, 8)


def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"onnx_test_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_and_compile(model: Path, tmp_path: Path, *extra):
    """``graphc import`` then ``graphc compile`` through the real command; the generated module, imported."""
    spec = tmp_path / f"{model.stem}.toml"
    result = graphc("import", model, "-o", spec, *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"graphc: wrote {spec} and {spec.with_suffix('.npz')}\n"
    module = tmp_path / f"{model.stem}_model.py"
    result = graphc("compile", spec, "-o", module, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return spec, load_module(module)


def reference(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


# ---- PyTorch's exports ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model, inputs", [("mlp", 1), ("mlp_opset11_ir3", 1), ("mlp_dynamo", 1),
                                           ("activations", 1), ("arithmetic", 2)])
def test_pytorch_models_predict_what_pytorch_computes_at_every_batch_size(model, inputs, tmp_path):
    spec, mod = import_and_compile(FIXTURES / f"{model}.onnx", tmp_path, "--dim", "N=8")
    ref = reference(model.split("_")[0] if model.startswith("mlp") else model)
    assert mod.INPUTS == (("x",) if inputs == 1 else ("x", "y"))
    params = mod.init_params()  # the imported weights, from the .npz beside the module
    for n in BATCHES:
        outs = as_tuple(mod.predict(params, *[ref[f"in{k}_{n}"] for k in range(inputs)]))
        expected = [ref[f"out{k}_{n}"] for k in range(len(outs))]
        assert len(outs) == len([k for k in ref if k.startswith("out") and k.endswith(f"_{n}")])
        for got, want in zip(outs, expected):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mlp_spec_is_the_readable_one(tmp_path, update_golden):
    """The imported spec of the 3-layer MLP, byte for byte (tests/onnx/mlp_spec.golden; --update-golden
    rewrites it).."""
    spec = tmp_path / "mlp.toml"
    assert main(["import", str(FIXTURES / "mlp.onnx"), "-o", str(spec)]) == 0
    text = spec.read_text().replace(str(FIXTURES / "mlp.onnx"), "tests/onnx/mlp.onnx").replace(str(spec), "mlp.toml")
    golden = FIXTURES / "mlp_spec.golden"  # not a .toml: its params_file names the imported mlp.npz
    if update_golden:
        golden.write_text(text)
    assert text == golden.read_text()
    for line in ['x = ["N", 4]', 'fc1_weight = { shape = [16, 4], init = "file" }  # ONNX: fc1.weight',
                 '"relu(x @ transpose(fc1_weight) + fc1_bias)"', 'logits = "Tanh @ transpose(fc3_weight) + fc3_bias"',
                 'outputs = ["logits"]', 'dtype = "float32"', 'params_file = "mlp.npz"',
                 '# loss = "cross_entropy(logits, labels)"', '# labels = { shape = ["N"], dtype = "int64" }']:
        assert line in text
    model = onnx.load(str(FIXTURES / "mlp.onnx"))
    with np.load(tmp_path / "mlp.npz") as npz:
        assert sorted(npz.files) == sorted(t.name.replace(".", "_") for t in model.graph.initializer)
        for t in model.graph.initializer:
            np.testing.assert_array_equal(npz[t.name.replace(".", "_")], numpy_helper.to_array(t))


def with_loss(text: str, lr: float) -> str:
    """The imported spec with its commented loss lines switched on, as the spec's own comment says."""
    for commented in ["# labels = ", '# loss = "cross_entropy', '# loss = "loss"', '# optimizer = "adam"']:
        assert commented in text
        text = text.replace(commented, commented[2:])
    return text.replace("# lr = 1e-3", f"lr = {lr!r}")


def test_gradients_and_adam_steps_after_adding_a_loss_match_pytorch(tmp_path):
    spec = tmp_path / "mlp.toml"
    assert main(["import", str(FIXTURES / "mlp.onnx"), "-o", str(spec), "--dim", "N=8"]) == 0
    spec.write_text(with_loss(spec.read_text(), lr=1e-2))
    module = tmp_path / "mlp.py"
    assert main(["compile", str(spec), "-o", str(module)]) == 0
    mod = load_module(module)
    ref = reference("mlp")
    names = {f"fc{i}_{kind}": f"fc{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")}
    assert set(mod.PARAMS) == set(names) and mod.OPTIMIZER == "adam"
    x, labels = ref["train_x"], ref["train_labels"]

    loss, grads = mod.value_and_grad(mod.init_params(), x, labels)
    np.testing.assert_allclose(loss, ref["grad_loss"], rtol=1e-5)
    for name, torch_name in names.items():
        np.testing.assert_allclose(grads[name], ref[f"grad/{torch_name}"], rtol=1e-4, atol=1e-6, err_msg=name)

    trainer = mod.Trainer(mod.init_params())  # lr = 1e-2 and torch.optim.Adam's defaults, as the fixture
    for step in (1, 2, 3):
        loss = trainer.step(x, labels)
        np.testing.assert_allclose(loss, ref[f"adam{step}_loss"], rtol=1e-5)
        for name, torch_name in names.items():
            np.testing.assert_allclose(trainer.params[name], ref[f"adam{step}/{torch_name}"], rtol=1e-4,
                                       atol=1e-6, err_msg=f"step {step}: {name}")


def test_from_onnx_gives_the_graph_and_the_initial_arrays():
    for source in (FIXTURES / "mlp.onnx", str(FIXTURES / "mlp.onnx"), onnx.load(str(FIXTURES / "mlp.onnx")),
                   (FIXTURES / "mlp.onnx").read_bytes()):
        g, values = gc.from_onnx(source)
        assert isinstance(g, gc.Graph) and g.dtype == "float32"
        assert g.inputs == ["x"] and g.nx.nodes["x"]["shape"] == ("N", 4)
        assert g.params == list(values) == ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "fc3_weight",
                                            "fc3_bias"]
        assert all(g.nx.nodes[p]["init"] == "file" for p in g.params)
        assert {g.nx.nodes[v]["op"] for v in g.nx} == {"input", "param", "matmul", "transpose", "add", "relu",
                                                         "tanh"}
    mod = gc.compile(g, outputs=["logits"], init_values=values, dims={"N": 3}).load()
    ref = reference("mlp")
    np.testing.assert_allclose(mod.predict(mod.init_params(), ref["in0_3"]), ref["out0_3"], rtol=1e-5, atol=1e-6)


def test_ir3_inputs_with_initializers_are_params_and_old_opsets_are_converted(tmp_path):
    spec = tmp_path / "old.toml"
    assert main(["import", str(FIXTURES / "mlp_opset11_ir3.onnx"), "-o", str(spec)]) == 0
    text = spec.read_text()
    assert "opset 11 converted to 17" in text
    parsed = load_spec(spec)
    assert parsed.graph.inputs == ["x"] and len(parsed.graph.params) == 6


def test_external_data_is_read_from_beside_the_model_and_never_written(tmp_path):
    model = onnx.load(str(FIXTURES / "mlp.onnx"))
    onnx.save_model(model, str(tmp_path / "big.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert "big.onnx.data" in before and len(before["big.onnx"]) < 1000
    spec, mod = import_and_compile(tmp_path / "big.onnx", tmp_path)  # [dims] N = 32, the default
    ref = reference("mlp")
    np.testing.assert_allclose(mod.predict(mod.init_params(), ref["in0_8"]), ref["out0_8"], rtol=1e-5, atol=1e-6)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
    # A spec named so that its .npz would be the data file: refused, nothing written.
    result = graphc("import", "big.onnx", "-o", "big.onnx.toml", cwd=tmp_path)
    assert result.returncode == 0  # big.onnx.npz is not big.onnx.data
    (tmp_path / "w.npz").write_bytes((tmp_path / "big.onnx").read_bytes())
    result = graphc("import", "w.npz", "-o", "w.toml", cwd=tmp_path)
    assert result.returncode == 2 and "would replace the model's own file" in result.stderr
    assert not (tmp_path / "w.toml").exists()


# ---- hand-made graphs: the details of section 12 ---------------------------------------------------------

def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="g"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def check_against_reference(model, feeds: dict, dims=None, rtol=1e-5, engine="reference"):
    """Compile the imported model and compare predict with onnx.reference (or onnxruntime) on ``feeds``."""
    imported = importer.import_model(model, dims)
    mod = gc.compile(imported.graph, outputs=imported.outputs, init_values=imported.values,
                     dims={d: 2 for v in imported.graph.inputs for d in imported.graph.nx.nodes[v]["shape"]
                           if isinstance(d, str)}).load()
    if engine == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = session.run(None, feeds)
    else:
        want = ReferenceEvaluator(model).run(None, feeds)
    got = as_tuple(mod.predict(mod.init_params(), **{imported.names.ident[k]: v for k, v in feeds.items()}))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
    return imported


def spec_of(imported) -> str:
    return spec_writer.spec_text(imported, "m.toml", "m.npz", "graphc import m.onnx")


def test_gemm_attributes_become_transposes_and_multiplications():
    rng = np.random.default_rng(0)
    A, B, C = (rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5, 3), (5,)])
    node = helper.make_node("Gemm", ["A", "B", "C"], ["Y"], alpha=0.5, beta=2.0, transA=1, transB=1)
    model = make_model([node], [vi("A", ["N", 4])], [vi("Y", [4, 5])], [init("B", B), init("C", C)])
    imported = importer.import_model(model, {"A.0": "3"})
    assert 'Y = "0.5 * (transpose(A) @ transpose(B)) + 2.0 * C"' in spec_of(imported)
    mod = gc.compile(imported.graph, outputs=imported.outputs, init_values=imported.values).load()
    np.testing.assert_allclose(mod.predict(mod.init_params(), A), 0.5 * A.T @ B.T + 2.0 * C, rtol=1e-5)
    plain = make_model([helper.make_node("Gemm", ["A", "B", "C"], ["Y"])], [vi("A", [2, 5])], [vi("Y", [2, 3])],
                       [init("B", B), init("C", np.float32(1.5))])
    x = rng.standard_normal((2, 5)).astype(np.float32)
    assert 'Y = "A @ B + 1.5"' in spec_of(check_against_reference(plain, {"A": x}))


def test_leaky_relu_slope_is_the_float32_value_and_softmax_keeps_its_axis():
    nodes = [helper.make_node("LeakyRelu", ["x"], ["h"], alpha=0.2), helper.make_node("Softmax", ["h"], ["y"], axis=0)]
    model = make_model(nodes, [vi("x", [3, 4])], [vi("y", [3, 4])])
    imported = check_against_reference(model, {"x": np.random.default_rng(1).standard_normal((3, 4), np.float32)})
    text = spec_of(imported)
    assert "leaky_relu(x, negative_slope=0.20000000298023224)" in text and float(np.float32(0.2)) == 0.20000000298023224
    assert 'y = "softmax(h, axis=0)"' in text


def test_scalar_initializers_are_constants_and_integer_axes_are_attributes():
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
             helper.make_node("Mul", ["s", "two"], ["m"]),
             helper.make_node("ReduceMean", ["m"], ["y"], axes=[0], keepdims=0),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32(-0.25))),
             helper.make_node("Sub", ["y", "c"], ["z"])]
    model = make_model(nodes, [vi("x", ["batch", 3])], [vi("z", [1])],
                       [init("axes", np.array([1], np.int64)), init("two", np.float32(2.0))])
    imported = check_against_reference(model, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    assert imported.values == {} and imported.graph.params == []
    text = spec_of(imported)
    assert 'z = "mean(sum(x, axis=1, keepdims=True) * 2.0, axis=0) - -0.25"' in text


def test_every_elementwise_op_and_identity_flatten_transpose():
    ops = [helper.make_node("Sigmoid", ["x"], ["a"]), helper.make_node("Tanh", ["a"], ["b"]),
           helper.make_node("Exp", ["b"], ["c"]), helper.make_node("Log", ["c"], ["d"]),
           helper.make_node("Neg", ["d"], ["e"]), helper.make_node("Relu", ["e"], ["f"]),
           helper.make_node("Div", ["a", "c"], ["g"]), helper.make_node("Identity", ["g"], ["h"]),
           helper.make_node("Flatten", ["h"], ["i"]), helper.make_node("Transpose", ["i"], ["j"], perm=[1, 0]),
           helper.make_node("MatMul", ["x", "j"], ["k"]), helper.make_node("LogSoftmax", ["k"], ["l"]),
           helper.make_node("Add", ["l", "f"], ["out"])]
    model = make_model(ops, [vi("x", ["N", "N"])], [vi("out", ["N", "N"]), vi("h", ["N", "N"])])
    x = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    imported = check_against_reference(model, {"x": x})
    assert imported.outputs == ["out", "h"]


def test_float64_models_give_float64_modules():
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"])], [vi("x", [2, 3], TensorProto.DOUBLE)],
                       [vi("y", [2, 3], TensorProto.DOUBLE)], [init("b", np.ones(3))])
    imported = check_against_reference(model, {"x": np.ones((2, 3))})
    assert imported.graph.dtype == "float64" and 'dtype = "float64"' in spec_of(imported)


def test_names_are_sanitised_uniquely_and_mapped_back_in_comments(tmp_path):
    nodes = [helper.make_node("Add", ["lambda", "fc.weight"], ["_t"]), helper.make_node("Add", ["_t", "fc_weight"], ["0out"]),
             helper.make_node("Mul", ["0out", "iterations"], ["class"])]
    model = make_model(nodes, [vi("lambda", [2, 3]), vi("iterations", [2, 3])], [vi("class", [2, 3])],
                       [init("fc.weight", np.ones((2, 3), np.float32)), init("fc_weight", np.full((2, 3), 2, np.float32))])
    onnx.save(model, str(tmp_path / "names.onnx"))
    spec, mod = import_and_compile(tmp_path / "names.onnx", tmp_path)
    text = spec.read_text()
    assert mod.INPUTS == ("lambda_", "iterations_") and mod.PARAMS == ("fc_weight", "fc_weight_2")
    for line in ["lambda_ = [2, 3]  # ONNX: lambda", "iterations_ = [2, 3]  # ONNX: iterations",
                 "fc_weight = { shape = [2, 3], init = \"file\" }    # ONNX: fc.weight",
                 "fc_weight_2 = { shape = [2, 3], init = \"file\" }  # ONNX: fc_weight",
                 'class_ = "(lambda_ + fc_weight + fc_weight_2) * iterations_"  # ONNX: class (Mul node class)']:
        assert " ".join(line.split()) in [" ".join(t.split()) for t in text.splitlines()], text
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(mod.predict(mod.init_params(), x, x), (x + 3) * x)


def test_identifier_rules():
    assert importer.identifier("fc1.weight") == "fc1_weight"
    assert importer.identifier("/fc1/Gemm_output_0") == "fc1_Gemm"
    assert importer.identifier("0.weight") == "v0_weight"
    assert importer.identifier("_hidden") == "hidden"
    assert importer.identifier("def") == "def_"
    assert importer.identifier("a-b c\u00e9") == "a_b_c"
    assert importer.identifier("...") == "v"


def test_unnamed_dimension_needs_dim_and_dim_fixes_or_names_it(tmp_path):
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [vi("X", [None, 4])], [vi("Y", [None, 4])])
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = graphc("import", "m.onnx", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("graphc: error: m.onnx: input 'X' axis 0 has neither a size nor a name: name it with "
                             "--dim X.0=N (a named dimension) or fix it with --dim X.0=64\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert graphc("import", "m.onnx", "--dim", "X.0=N", "--dim", "N=16", cwd=tmp_path).returncode == 0
    text = (tmp_path / "m.toml").read_text()
    assert 'X = ["N", 4]' in text and "[dims]" in text and "\nN = 16\n" in text
    assert graphc("import", "m.onnx", "--dim", "X.0=64", cwd=tmp_path).returncode == 0
    assert "X = [64, 4]" in (tmp_path / "m.toml").read_text()
    result = graphc("import", "m.onnx", "--dim", "X.0=N", "--dim", "M=3", cwd=tmp_path)
    assert result.returncode == 2 and "no input has a dimension named 'M' (named dimensions: N)" in result.stderr


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------------

def bad_files(tmp_path: Path) -> dict:
    good = (FIXTURES / "mlp.onnx").read_bytes()
    return {
        "random.onnx": np.random.default_rng(0).bytes(300),
        "empty.onnx": b"",
        "truncated.onnx": good[: len(good) // 2],
        "spec.onnx": b'name = "m"\n[inputs]\nX = [2, 3]\n',
    }


@pytest.mark.parametrize("name", ["random.onnx", "empty.onnx", "truncated.onnx", "spec.onnx"])
def test_not_an_onnx_file(name, tmp_path):
    (tmp_path / name).write_bytes(bad_files(tmp_path)[name])
    (tmp_path / "out.toml").write_text("# an earlier spec\n")
    result = graphc("import", name, "-o", "out.toml", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"graphc: error: {name}: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert "not an ONNX model" in result.stderr or "not a valid ONNX model" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.toml"])
    assert (tmp_path / "out.toml").read_text() == "# an earlier spec\n"


def test_unsupported_op_names_the_op_the_node_and_the_supported_list(tmp_path):
    model = make_model([helper.make_node("Abs", ["x"], ["a"], name="the_abs"), helper.make_node("Relu", ["a"], ["y"])],
                       [vi("x", [2])], [vi("y", [2])])
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = graphc("import", "m.onnx", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("graphc: error: m.onnx: ONNX node 'the_abs' (Abs): unsupported op Abs (graphc imports "
                             f"{', '.join(importer.SUPPORTED)})\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_unsupported_forms_of_supported_ops_are_one_line_errors():
    cases = [
        (make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [2, 2, 3])], [vi("y", [2, 2, 2])],
                    [init("w", np.ones((2, 2), np.float32))]), "shapes (2, 2, 3) and (2, 2) do not align"),
        (make_model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 0, 1])], [vi("x", [2, 2, 3])],
                    [vi("y", [2, 2, 3])]), "Transpose of a 3-D value with perm=[0, 0, 1]: not a permutation"),
        (make_model([helper.make_node("Gather", ["w", "i"], ["y"], axis=1)], [vi("i", [2], TensorProto.INT64)],
                    [vi("y", [3, 2])], [init("w", np.ones((3, 4), np.float32))]), "by computed indices"),
        (make_model([helper.make_node("Add", ["x", "x"], ["y"])], [vi("x", [2], TensorProto.INT32)],
                    [vi("y", [2], TensorProto.INT32)]), "input 'x' has element type INT32"),
        (make_model([helper.make_node("Flatten", ["x"], ["y"], axis=2)], [vi("x", ["N", 2, 3])], [vi("y", [None, 3])]),
         "Flatten of a 3-D value ('N', 2, 3) with axis=2"),
    ]
    for model, message in cases:
        with pytest.raises(gc.GraphcError) as err:
            gc.from_onnx(model)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_the_spec_must_be_toml_and_the_model_is_never_replaced(tmp_path):
    (tmp_path / "m.onnx").write_bytes((FIXTURES / "mlp.onnx").read_bytes())
    result = graphc("import", "m.onnx", "-o", "m.onnx", cwd=tmp_path)
    assert result.returncode == 2 and "must end in .toml" in result.stderr
    assert (tmp_path / "m.onnx").read_bytes() == (FIXTURES / "mlp.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_existing_spec_is_replaced_atomically_and_no_temporary_file_is_left(tmp_path):
    (tmp_path / "m.onnx").write_bytes((FIXTURES / "mlp.onnx").read_bytes())
    (tmp_path / "m.toml").write_text("old")
    os.chmod(tmp_path / "m.toml", 0o600)
    assert graphc("import", "m.onnx", cwd=tmp_path).returncode == 0
    assert (tmp_path / "m.toml").read_text().startswith("# Imported by graphc")
    assert oct((tmp_path / "m.toml").stat().st_mode & 0o777) == oct(0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.onnx", "m.toml"]


def test_import_graphc_does_not_import_onnx_and_a_missing_onnx_is_one_line(tmp_path):
    code = "import sys, graphc, graphc.cli; print('onnx' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout == "False\n", result.stderr
    (tmp_path / "m.onnx").write_bytes((FIXTURES / "mlp.onnx").read_bytes())
    (tmp_path / "s.toml").write_text('[inputs]\nx = [2, 3]\n[params]\nw = { shape = [3, 1] }\n[nodes]\ny = "x @ w"\n'
                                     '[train]\noutputs = ["y"]\n')
    hide = "import sys; sys.modules['onnx'] = None; from graphc.cli import main; sys.exit(main(sys.argv[1:]))"
    for args in (["import", "m.onnx"], ["export", "s.toml", "-o", "s.onnx"]):
        result = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr == ("graphc: error: ONNX import and export need the onnx package: install the extra: "
                                 "pip install 'graphc[onnx]'\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "s.toml"]


def test_a_dim_param_named_like_a_value_is_renamed(tmp_path):
    W = np.arange(6, dtype=np.float32).reshape(3, 2)
    model = make_model([helper.make_node("Gemm", ["N", "W"], ["Y"])], [vi("N", ["N", 3])], [vi("Y", ["N", 2])],
                       [init("W", W)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    spec, mod = import_and_compile(tmp_path / "m.onnx", tmp_path, "--dim", "N=5")
    assert 'N = ["N_2", 3]' in spec.read_text() and "N_2 = 5  # ONNX: N" in spec.read_text()
    x = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(mod.predict(mod.init_params(), x), x @ W)


def test_a_params_file_that_does_not_match_is_one_line_naming_the_param(tmp_path):
    spec = tmp_path / "mlp.toml"
    assert main(["import", str(FIXTURES / "mlp.onnx"), "-o", str(spec)]) == 0
    with np.load(tmp_path / "mlp.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(tmp_path / "mlp.npz", **{k: v for k, v in arrays.items() if k != "fc2_bias"})
    result = graphc("compile", "mlp.toml", "-o", "m.py", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "fc2_bias" in result.stderr
    np.savez(tmp_path / "mlp.npz", **{**arrays, "fc2_bias": np.zeros(7, np.float32)})
    result = graphc("compile", "mlp.toml", "-o", "m.py", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "fc2_bias" in result.stderr
    (tmp_path / "mlp.npz").unlink()
    result = graphc("compile", "mlp.toml", "-o", "m.py", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "mlp.npz" in result.stderr
    assert not (tmp_path / "m.py").exists()


def test_import_is_deterministic(tmp_path):
    outputs = []
    for seed in ("0", "123"):
        out = tmp_path / seed
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-m", "graphc", "import", str(FIXTURES / "activations.onnx"), "-o",
                                 "m.toml"], capture_output=True, text=True, cwd=out, env=env)
        assert result.returncode == 0, result.stderr
        outputs.append(((out / "m.toml").read_bytes(), (out / "m.npz").read_bytes()))
    assert outputs[0] == outputs[1]


# ---- folding: nodes of constant inputs, and the shape arithmetic around Reshape ------------------------------

def shape_arithmetic_model(tail=()):
    """y = reshape(x, (N, C*H*W)) the way PyTorch's exporters write it, from x's Shape: the batch passes through
    Gather/Unsqueeze/Concat, the rest is ReduceProd of a Slice; plus a factor from Range, ConstantOfShape, Expand,
    Mod and Cast of constants only."""
    def C(name, v):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(v)))

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        C("zero", np.int64(0)), C("one", np.array([1], np.int64)), C("big", np.array([99], np.int64)),
        C("ax0", np.array([0], np.int64)),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Slice", ["s", "one", "big"], ["rest"]),
        helper.make_node("ReduceProd", ["rest"], ["size"], keepdims=1),
        helper.make_node("Concat", ["n1", "size"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        C("three", np.array([3], np.int64)), C("start", np.int64(1)), C("stop", np.int64(4)), C("step", np.int64(1)),
        helper.make_node("Range", ["start", "stop", "step"], ["r"]),  # [1, 2, 3]
        helper.make_node("ConstantOfShape", ["three"], ["ones"],
                         value=numpy_helper.from_array(np.array([2], np.int64))),
        helper.make_node("Mod", ["r", "ones"], ["m"]),  # [1, 0, 1]
        helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
        C("shape24", np.array([8, 3], np.int64)),
        helper.make_node("Expand", ["mf", "shape24"], ["e"]),  # (8, 3)
        helper.make_node("Reshape", ["e", "size"], ["factor"]),  # (24,)
        helper.make_node("Mul", ["flat", "factor"], ["y"]),
        *tail,
    ]
    return make_model(nodes, [vi("x", ["N", 2, 3, 4])], [vi("y", ["N", 24])])


def test_shape_arithmetic_folds_at_import_and_the_batch_stays_named():
    x = np.random.default_rng(4).standard_normal((3, 2, 3, 4)).astype(np.float32)
    imported = check_against_reference(shape_arithmetic_model(), {"x": x})
    text = spec_of(imported)
    assert 'x = ["N", 2, 3, 4]' in text and "reshape(x, shape=(N, 24))" in text
    assert {imported.graph.nx.nodes[v]["op"] for v in imported.graph.nx} == {"input", "param", "reshape", "mul"}
    assert imported.values["factor"].tolist() == [1.0, 0.0, 1.0] * 8  # the folded constant, as a param


def test_weights_are_never_folded_away():
    """A Transpose of an initializer stays a transpose of the param (training changes the param)."""
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "Wt"], ["y"])]
    model = make_model(nodes, [vi("x", ["N", 3])], [vi("y", ["N", 2])], [init("W", W)])
    imported = check_against_reference(model, {"x": np.ones((2, 3), np.float32)})
    assert imported.graph.params == ["W"] and "x @ transpose(W)" in spec_of(imported)


@pytest.mark.parametrize("node, message", [
    (helper.make_node("Mul", ["n1", "n1"], ["target"]), "Mul computes with the named dimension (N): graphc folds"),
    (helper.make_node("ConstantOfShape", ["n1"], ["target"]), "ConstantOfShape sized by the named dimension N"),
])
def test_arithmetic_on_a_named_dimension_is_one_line(node, message):
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Gather", ["s", "zero"], ["n1"], axis=0), node,
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(nodes, [vi("x", ["N", 2])], [vi("y", [None])])
    with pytest.raises(gc.GraphcError) as err:
        gc.from_onnx(model)
    assert message in str(err.value) and "\n" not in str(err.value)


def conv_model(op_type, x_shape, w_shape, y_shape, **attrs):
    rng = np.random.default_rng(5)
    w = (rng.standard_normal(w_shape) * 0.3).astype(np.float32)
    outputs = w_shape[1] * attrs.get("group", 1) if op_type == "ConvTranspose" else w_shape[0]
    b = rng.standard_normal(outputs).astype(np.float32)
    node = helper.make_node(op_type, ["x", "w", "b"], ["y"], **attrs)
    model = make_model([node], [vi("x", ["N", *x_shape])], [vi("y", ["N", *y_shape])], [init("w", w), init("b", b)])
    return model, {"x": rng.standard_normal((2, *x_shape)).astype(np.float32)}


@pytest.mark.parametrize("op_type, x_shape, w_shape, y_shape, attrs", [
    ("Conv", (4, 7, 6), (6, 2, 3, 3), (6, 7, 6), dict(auto_pad="SAME_UPPER", group=2)),
    ("Conv", (3, 9, 9), (4, 3, 3, 2), (4, 4, 4), dict(strides=[2, 2], pads=[1, 0, 1, 0], dilations=[1, 2])),
    ("Conv", (3, 10), (5, 3, 3), (5, 10), dict(pads=[2, 2], dilations=[2])),
    ("Conv", (3, 10), (5, 3, 4), (5, 10), dict(auto_pad="SAME_UPPER")),
    ("ConvTranspose", (4, 5, 5), (4, 3, 3, 3), (3, 10, 10), dict(strides=[2, 2], output_shape=[10, 10])),
    ("ConvTranspose", (4, 5, 5), (4, 3, 3, 3), (6, 11, 11), dict(strides=[2, 2], pads=[1, 1, 0, 0], group=2)),
    ("ConvTranspose", (4, 6), (4, 2, 3), (2, 13), dict(strides=[2], pads=[1, 1], output_padding=[1])),
])
def test_conv_attributes_map_onto_the_table(op_type, x_shape, w_shape, y_shape, attrs):
    """onnxruntime is the reference here: onnx.reference's ConvTranspose takes neither groups nor output_shape."""
    model, feeds = conv_model(op_type, x_shape, w_shape, y_shape, **attrs)
    check_against_reference(model, feeds, rtol=1e-4, engine="onnxruntime")


def test_pooling_slicing_and_identities():
    nodes = [helper.make_node("MaxPool", ["x"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["a"], ["b"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0),
             helper.make_node("GlobalAveragePool", ["b"], ["c"]),
             helper.make_node("Dropout", ["c"], ["d"]),
             helper.make_node("CastLike", ["d", "x"], ["e"]),
             helper.make_node("Squeeze", ["e", "sq"], ["f"]),
             helper.make_node("Slice", ["f", "st", "en", "ax", "sp"], ["g"]),
             helper.make_node("Unsqueeze", ["g", "un"], ["y"])]
    model = make_model(nodes, [vi("x", ["N", 4, 8, 8])], [vi("y", ["N", 1, 2])],
                       [init("sq", np.array([2, 3], np.int64)), init("st", np.array([-1], np.int64)),
                        init("en", np.array([-(1 << 63)], np.int64)), init("ax", np.array([1], np.int64)),
                        init("sp", np.array([-2], np.int64)), init("un", np.array([1], np.int64))])
    x = np.random.default_rng(6).standard_normal((2, 4, 8, 8)).astype(np.float32)
    check_against_reference(model, {"x": x})


def test_a_huge_folded_constant_is_refused_before_it_is_made():
    one = numpy_helper.from_array(np.array([1.0], np.float32))
    nodes = [helper.make_node("ConstantOfShape", ["big"], ["c"], value=one),
             helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], [init("big", np.array([1 << 40], np.int64))])
    with pytest.raises(gc.GraphcError) as err:
        gc.from_onnx(model)
    assert "ConstantOfShape would make a constant of 1099511627776 elements: graphc folds at most 16777216" in str(
        err.value)


def test_random_ops_are_not_folded():
    """Import is deterministic: a RandomNormal of constant inputs is an unsupported op, not a random constant."""
    nodes = [helper.make_node("RandomNormal", [], ["r"], shape=[2]), helper.make_node("Add", ["x", "r"], ["y"])]
    with pytest.raises(gc.GraphcError) as err:
        gc.from_onnx(make_model(nodes, [vi("x", [2])], [vi("y", [2])]))
    assert "unsupported op RandomNormal" in str(err.value)


# ---- section 16: Transpose with perm, MatMul at any rank, Gather, BatchNormalization, Where --------------------

def test_transpose_perm_and_matmul_at_any_rank():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),  # (N, 3, 4, 2) -> (N, 4, 2, 3)
             helper.make_node("MatMul", ["t", "w"], ["m"]),  # (N, 4, 2, 5)
             helper.make_node("Transpose", ["m"], ["u"], perm=[0, 1, 3, 2]),  # (N, 4, 5, 2)
             helper.make_node("MatMul", ["m", "u"], ["y"]),  # (N, 4, 2, 2): batched
             helper.make_node("MatMul", ["v", "w"], ["z"])]  # 1-D @ 2-D
    model = make_model(nodes, [vi("x", ["N", 3, 4, 2]), vi("v", [3])], [vi("y", ["N", 4, 2, 2]), vi("z", [5])],
                       [init("w", w)])
    feeds = {"x": rng.standard_normal((2, 3, 4, 2)).astype(np.float32), "v": rng.standard_normal(3).astype(np.float32)}
    text = spec_of(check_against_reference(model, feeds, engine="onnxruntime", rtol=1e-4))
    assert "transpose(x, axes=(0, 2, 3, 1))" in text and "axes=(0, 1, 3, 2)" in text


def test_gather_of_int64_ids_is_embedding_and_constant_runs_are_slices():
    rng = np.random.default_rng(8)
    tok, pos = rng.standard_normal((10, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["tok", "ids"], ["e"], axis=0),
             helper.make_node("Gather", ["pos", "run"], ["p"], axis=0),  # torch's pos_emb(arange(T))
             helper.make_node("Add", ["e", "p"], ["h"]),
             helper.make_node("Gather", ["h", "last"], ["y"], axis=1)]  # h[:, -1]
    model = make_model(nodes, [vi("ids", ["N", 3], TensorProto.INT64)], [vi("y", ["N", 4]), vi("h", ["N", 3, 4])],
                       [init("tok", tok), init("pos", pos), init("run", np.arange(3, dtype=np.int64)),
                        init("last", np.array(-1, np.int64))])
    ids = rng.integers(0, 10, (2, 3)).astype(np.int64)
    imported = check_against_reference(model, {"ids": ids}, engine="onnxruntime")
    text = spec_of(imported)
    assert 'ids = { shape = ["N", 3], dtype = "int64" }' in text and "embedding(ids, tok)" in text
    assert "slice(pos, axis=0, stop=3)" in text and "slice(h, axis=1, start=2)" in text and imported.graph.nx.nodes["ids"]["dtype"] == "int64"


def test_batch_normalization_keeps_running_statistics_frozen_and_where_takes_a_bool_input():
    rng = np.random.default_rng(9)
    stats = [rng.standard_normal(3).astype(np.float32) for _ in range(3)] + [rng.random(3).astype(np.float32) + 0.5]
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["n"], epsilon=1e-3,
                              momentum=0.8),
             helper.make_node("Where", ["c", "n", "zero"], ["y"])]
    model = make_model(nodes, [vi("x", ["N", 3, 4]), vi("c", ["N", 3, 4], TensorProto.BOOL)], [vi("y", ["N", 3, 4])],
                       [init(k, a) for k, a in zip(["s", "b", "mean", "var"], stats)] + [init("zero", np.float32(0))])
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32), "c": rng.random((2, 3, 4)) < 0.5}
    imported = check_against_reference(model, feeds, engine="onnxruntime", rtol=1e-4)
    G = imported.graph.nx
    assert [v for v in imported.graph.params if not G.nodes[v].get("trainable", True)] == ["mean", "var"]
    text = spec_of(imported)
    assert 'y = "where(c, batch_norm(x, s, b, mean, var, momentum=0.2, eps=0.0010000000474974513), 0.0)"' in text
    assert 'mean = { shape = [3], init = "file", trainable = false }' in text


def test_a_constant_condition_folds_to_a_frozen_mask():
    """How exporters write causal attention: Trilu and Equal fold; Where of the folded condition and -inf is the
    scores plus a frozen mask param (a huge negative number where the condition fails). And Softplus."""
    rng = np.random.default_rng(10)
    ones = numpy_helper.from_array(np.ones((4, 4), np.float32))
    nodes = [helper.make_node("Constant", [], ["ones"], value=ones),
             helper.make_node("Trilu", ["ones"], ["low"], upper=0),
             helper.make_node("Equal", ["low", "one"], ["keep"]),
             helper.make_node("Where", ["keep", "x", "neg_inf"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("Where", ["keep", "p", "x"], ["w"]),
             helper.make_node("Softplus", ["w"], ["y"])]
    model = make_model(nodes, [vi("x", ["N", 4, 4])], [vi("y", ["N", 4, 4])],
                       [init("one", np.float32(1)),
                        init("neg_inf", np.float32(-np.inf))])
    imported = check_against_reference(model, {"x": rng.standard_normal((2, 4, 4)).astype(np.float32)},
                                       engine="onnxruntime")
    G = imported.graph.nx
    assert imported.graph.params and all(G.nodes[v].get("trainable") is False for v in imported.graph.params)
    assert imported.values[imported.graph.params[0]][0, 3] < -1e37


# ---- opset 23's Attention and RMSNormalization, SoftmaxCrossEntropyLoss, Sum and Mean ---------------------------

def opset23(nodes, inputs, outputs, initializers=()):
    model = make_model(nodes, inputs, outputs, initializers, opset=23)
    model.ir_version = 10  # opset 23's
    onnx.checker.check_model(model, full_check=True)
    return model


def test_attention_is_graphcs_attention_in_heads_4d_and_split_from_3d():
    """4-D q, k, v directly; 3-D (B, S, H * D) split into heads by reshape and transpose and joined back. The value
    head size differs from the query's; is_causal hides the keys after each query (top-left, as torch's)."""
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1, scale=0.3),
             helper.make_node("Attention", ["q3", "k3", "v3"], ["y3"], q_num_heads=2, kv_num_heads=2)]
    shapes = {"q": ["N", 2, 3, 4], "k": ["N", 2, 5, 4], "v": ["N", 2, 5, 6], "q3": ["N", 3, 8], "k3": ["N", 5, 8],
              "v3": ["N", 5, 6]}
    model = opset23(nodes, [vi(k, s) for k, s in shapes.items()], [vi("y", ["N", 2, 3, 6]), vi("y3", ["N", 3, 6])])
    feeds = {k: rng.standard_normal([2] + s[1:]).astype(np.float32) for k, s in shapes.items()}
    text = spec_of(check_against_reference(model, feeds, rtol=1e-4))
    assert 'y = "attention(q, k, v, causal=True, scale=0.30000001192092896)"' in text
    assert "reshape(q3, shape=(N, 3, 2, 4))" in text and "axes=(0, 2, 1, 3)" in text


def test_rms_normalization_over_the_last_axis_or_the_axes_from_axis_on():
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("RMSNormalization", ["x", "s"], ["y"], epsilon=1e-3),
             helper.make_node("RMSNormalization", ["x", "s2"], ["y2"], axis=1)]  # over (3, 4), scale broadcast
    model = opset23(nodes, [vi("x", ["N", 3, 4])], [vi("y", ["N", 3, 4]), vi("y2", ["N", 3, 4])],
                    [init("s", rng.standard_normal(4).astype(np.float32)),
                     init("s2", rng.standard_normal((3, 1)).astype(np.float32))])
    text = spec_of(check_against_reference(model, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)},
                                           rtol=1e-4))
    assert 'y = "rms_norm(x, s, eps=0.0010000000474974513)"' in text and "reshape(x, shape=(N, 12))" in text


def test_softmax_cross_entropy_loss_is_cross_entropy_of_int64_labels():
    rng = np.random.default_rng(13)
    nodes = [helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["loss"], reduction="sum"),
             helper.make_node("SoftmaxCrossEntropyLoss", ["x2", "t2"], ["loss2"])]
    model = make_model(nodes, [vi("x", ["N", 3, 4]), vi("t", ["N", 4], TensorProto.INT64), vi("x2", ["N", 5]),
                               vi("t2", ["N"], TensorProto.INT64)], [vi("loss", []), vi("loss2", [])])
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32), "t": rng.integers(0, 3, (2, 4)),
             "x2": rng.standard_normal((2, 5)).astype(np.float32), "t2": rng.integers(0, 5, 2)}
    text = spec_of(check_against_reference(model, feeds, rtol=1e-5))
    assert 'loss = "cross_entropy(x, t, reduction=\'sum\')"' in text and 'loss2 = "cross_entropy(x2, t2)"' in text


def test_sum_and_mean_are_chains_of_add_broadcasting():
    rng = np.random.default_rng(14)
    nodes = [helper.make_node("Sum", ["a", "b", "c"], ["s"]), helper.make_node("Mean", ["a", "b"], ["m"]),
             helper.make_node("Sum", ["a"], ["one"])]
    model = make_model(nodes, [vi("a", ["N", 3]), vi("b", [3]), vi("c", [1, 3])],
                       [vi("s", ["N", 3]), vi("m", ["N", 3]), vi("one", ["N", 3])])
    onnx.checker.check_model(model, full_check=True)
    feeds = {"a": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32),
             "c": rng.standard_normal((1, 3)).astype(np.float32)}
    text = spec_of(check_against_reference(model, feeds))
    assert 's = "a + b + c"' in text and 'm = "(a + b) / 2.0"' in text


def test_forms_of_attention_rms_normalization_and_cross_entropy_graphc_does_not_compute_are_one_line_errors():
    qkv = [vi("q", [1, 2, 3, 4]), vi("k", [1, 2, 3, 4]), vi("v", [1, 2, 3, 4])]
    out = [vi("y", [1, 2, 3, 4])]
    cases = [
        (opset23([helper.make_node("Attention", ["q", "k", "v", "m"], ["y"])], qkv + [vi("m", [3, 3])], out),
         "Attention with 1 inputs past q, k, v (attn_mask"),
        (opset23([helper.make_node("Attention", ["q", "k", "v"], ["y"], softcap=2.0)], qkv, out),
         "Attention with softcap=2.0: graphc's attention does not compute it"),
        (opset23([helper.make_node("Attention", ["q", "k", "v"], ["y"])], qkv[:1] + [vi("k", [1, 1, 3, 4]),
                                                                                  vi("v", [1, 1, 3, 4])], out),
         "Attention of 2 query heads and 1 key, 1 value heads (grouped-query attention)"),
        (opset23([helper.make_node("RMSNormalization", ["x", "s"], ["y"], stash_type=11)], [vi("x", [2, 4])],
                 [vi("y", [2, 4])], [init("s", np.ones(4, np.float32))]),
         "RMSNormalization with stash_type=11 (DOUBLE): graphc computes in float32"),
        (make_model([helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["z"], reduction="none")],
                    [vi("x", [2, 3]), vi("t", [2], TensorProto.INT64)], [vi("z", [2])]),
         "SoftmaxCrossEntropyLoss with reduction='none': graphc's cross_entropy takes 'mean' or 'sum'"),
        (make_model([helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t", "w"], ["z"])],
                    [vi("x", [2, 3]), vi("t", [2], TensorProto.INT64), vi("w", [3])], [vi("z", [])]),
         "SoftmaxCrossEntropyLoss with weights"),
    ]
    for model, message in cases:
        with pytest.raises(gc.GraphcError) as err:
            gc.from_onnx(model)
        assert message in str(err.value) and "\n" not in str(err.value)
