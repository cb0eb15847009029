"""Hostile and faulty ONNX input (issue 18 items 2 and 8, issue 19 items 2 and 3): external data is read only
from the model's folder, whatever the tensor (initializer, a Constant's value, a nested graph's); impossible
tensor sizes, unknown opsets, other domains and unexportable params are one-line errors, exit 2, nothing written;
graphc export never replaces a model it did not write; graphc import says when every input dimension is fixed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc as gc

pytestmark = pytest.mark.unformatted

FIXTURES = Path(__file__).parent / "onnx"
REAL = np.array([1.0, 2.0, 3.0], np.float32)
DECOY = np.array([666.0, 666.0, 666.0], np.float32)


def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def one_line_error(result, *parts):
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("graphc: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


def model_of(nodes, inputs, outputs, initializers=(), opsets=(("", 17),)):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model


def external(name: str, location: str, dims=(3,)) -> TensorProto:
    """A float tensor whose data is in file ``location`` (relative to whatever folder it is read from)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def constant_model(location: str):
    """y = x * c, c a Constant whose value is external data at ``location``."""
    const = helper.make_node("Constant", [], ["c"], value=external("c", location))
    mul = helper.make_node("Mul", ["x", "c"], ["y"])
    return model_of([const, mul], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])


@pytest.fixture
def folders(tmp_path):
    """``model/`` holds the model's real data file, ``cwd/`` (the working directory) a decoy of the same name."""
    (tmp_path / "model").mkdir()
    (tmp_path / "cwd").mkdir()
    (tmp_path / "model" / "c.bin").write_bytes(REAL.tobytes())
    (tmp_path / "cwd" / "c.bin").write_bytes(DECOY.tobytes())
    return tmp_path / "model", tmp_path / "cwd"


def files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ---- external data: only from the model's folder --------------------------------------------------------

def test_a_constants_external_data_is_read_from_the_models_folder_not_the_working_directory(folders):
    model_dir, cwd = folders
    onnx.save(constant_model("c.bin"), str(model_dir / "m.onnx"))
    result = graphc("import", model_dir / "m.onnx", "-o", "m.toml", cwd=cwd)
    assert result.returncode == 0, result.stderr
    with np.load(cwd / "m.npz") as npz:
        assert list(npz.files) == ["c"]
        np.testing.assert_array_equal(npz["c"], REAL)
    graph, values = gc.from_onnx(model_dir / "m.onnx")
    np.testing.assert_array_equal(values["c"], REAL)


def test_a_constant_whose_data_is_only_in_the_working_directory_is_refused(folders):
    model_dir, cwd = folders
    (model_dir / "c.bin").unlink()
    onnx.save(constant_model("c.bin"), str(model_dir / "m.onnx"))
    before = files(cwd)
    one_line_error(graphc("import", model_dir / "m.onnx", "-o", "m.toml", cwd=cwd), "external data")
    assert files(cwd) == before


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_models_folder_is_refused(where, folders):
    model_dir, cwd = folders
    if where == "parent":
        location = "../cwd/c.bin"
    elif where == "absolute":
        location = str(cwd / "c.bin")
    else:
        os.symlink(cwd / "c.bin", model_dir / "link.bin")
        location = "link.bin"
    onnx.save(constant_model(location), str(model_dir / "m.onnx"))
    before = files(cwd)
    one_line_error(graphc("import", model_dir / "m.onnx", "-o", "m.toml", cwd=cwd), "m.onnx")
    assert files(cwd) == before
    with pytest.raises(gc.GraphcError):
        gc.from_onnx(model_dir / "m.onnx")


def test_a_nested_graphs_external_tensor_is_checked_too(folders):
    """An If's branch holds a Constant whose data would come from outside: refused before any op is looked at."""
    model_dir, cwd = folders
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])
    branch = helper.make_graph([helper.make_node("Constant", [], ["b"], value=external("b", "../cwd/c.bin"))],
                               "branch", [], [out])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    model = model_of([node], [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    onnx.save(model, str(model_dir / "m.onnx"))
    one_line_error(graphc("import", model_dir / "m.onnx", "-o", "m.toml", cwd=cwd), "'b'", "model's folder")


def test_a_model_object_or_bytes_with_external_data_is_refused(folders, monkeypatch):
    model_dir, cwd = folders
    monkeypatch.chdir(cwd)  # where the decoy is: nothing may read it
    model = constant_model("c.bin")
    for source in (model, model.SerializeToString()):
        with pytest.raises(gc.SpecError) as err:
            gc.from_onnx(source)
        assert "external data" in str(err.value) and "\n" not in str(err.value)


# ---- impossible tensors, opsets and domains -------------------------------------------------------------

@pytest.mark.parametrize("size", [20, 15, 12])
def test_raw_data_of_the_wrong_size_is_one_line(size, tmp_path):
    W = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[2, 2], raw_data=bytes(size))
    model = model_of([helper.make_node("MatMul", ["x", "W"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [W])
    onnx.save(model, str(tmp_path / "m.onnx"))
    one_line_error(graphc("import", "m.onnx", cwd=tmp_path), f"tensor 'W' has {size} bytes of raw_data",
                   "need 16")
    assert files(tmp_path).keys() == {"m.onnx"}


def test_an_unknown_opset_says_which_opsets_are_imported(tmp_path):
    model = model_of([helper.make_node("Relu", ["x"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], opsets=(("", 99),))
    onnx.save(model, str(tmp_path / "m.onnx"))
    latest = onnx.defs.onnx_opset_version()
    one_line_error(graphc("import", "m.onnx", cwd=tmp_path), "opset 99", f"opsets 1 to {latest}")
    assert files(tmp_path).keys() == {"m.onnx"}


def test_a_node_of_another_domain_names_the_op_and_the_domain(tmp_path):
    node = helper.make_node("Normalizer", ["x"], ["y"], name="norm", domain="ai.onnx.ml", norm="L2")
    model = model_of([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], opsets=(("ai.onnx.ml", 3),))
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = graphc("import", "m.onnx", cwd=tmp_path)
    one_line_error(result, "'norm' (Normalizer)", "domain 'ai.onnx.ml'")
    assert "convert" not in result.stderr
    assert files(tmp_path).keys() == {"m.onnx"}


# ---- graphc export: params it cannot write, files it did not write --------------------------------------

SPEC = """
[inputs]
x = ["N", 3]

[params]
W = { shape = [3, 2], init = "randn" }

[nodes]
y = "relu(x @ W)"

[train]
outputs = ["y"]
"""


@pytest.mark.parametrize("array, message", [
    (np.ones((3, 2), np.complex128), "param 'W' is an array of complex128"),
    (np.ones((3, 2), np.int64), "param 'W' is an array of int64"),
    (np.full((3, 2), "w"), "param 'W' is an array of <U1"),
    (np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), "param 'W' holds NaN or infinite values"),
    (np.array([[1.0, np.inf], [0.0, 1.0], [1.0, 1.0]]), "param 'W' holds NaN or infinite values"),
])
def test_export_params_that_are_not_finite_floats_are_one_line(array, message, tmp_path):
    (tmp_path / "s.toml").write_text(SPEC)
    np.savez(tmp_path / "p.npz", W=array)
    result = graphc("export", "s.toml", "--params", "p.npz", "-o", "s.onnx", cwd=tmp_path)
    one_line_error(result, "p.npz", message)
    assert files(tmp_path).keys() == {"s.toml", "p.npz"}


def test_export_replaces_only_models_graphc_wrote_unless_forced(tmp_path):
    (tmp_path / "mlp.toml").write_text(SPEC)
    pytorch = (FIXTURES / "mlp.onnx").read_bytes()  # made by PyTorch's exporter
    assert onnx.load_from_string(pytorch).producer_name == "pytorch"
    (tmp_path / "mlp.onnx").write_bytes(pytorch)
    (tmp_path / "notes.txt").write_text("mine")
    for target in ("mlp.onnx", "notes.txt"):
        args = ("export", "mlp.toml") if target == "mlp.onnx" else ("export", "mlp.toml", "-o", target)
        one_line_error(graphc(*args, cwd=tmp_path), target, "--force")
    assert (tmp_path / "mlp.onnx").read_bytes() == pytorch and (tmp_path / "notes.txt").read_text() == "mine"
    assert "'pytorch'" in graphc("export", "mlp.toml", cwd=tmp_path).stderr
    result = graphc("export", "mlp.toml", "--force", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "graphc: wrote mlp.onnx\n", result.stderr
    assert onnx.load(str(tmp_path / "mlp.onnx")).producer_name == "graphc"
    np.savez(tmp_path / "p.npz", W=np.ones((3, 2)))
    result = graphc("export", "mlp.toml", "--params", "p.npz", cwd=tmp_path)  # its own model: replaced
    assert result.returncode == 0, result.stderr
    W = numpy_helper.to_array(onnx.load(str(tmp_path / "mlp.onnx")).graph.initializer[0])
    np.testing.assert_array_equal(W, np.ones((3, 2)))


# ---- graphc import: a model of fixed sizes --------------------------------------------------------------

def fixed_model(tmp_path, shape):
    W = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    model = model_of([helper.make_node("MatMul", ["x", "W"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 2])], [W])
    onnx.save(model, str(tmp_path / "m.onnx"))


def test_import_says_when_every_input_dimension_is_fixed(tmp_path):
    fixed_model(tmp_path, [2, 4])
    result = graphc("import", "m.onnx", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "graphc: wrote m.toml and m.npz\n"
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("graphc: note: ")
    assert "every input dimension of m.onnx is fixed (x is (2, 4))" in result.stderr
    assert "--dim x.0=N" in result.stderr
    assert 'x = [2, 4]' in (tmp_path / "m.toml").read_text()
    result = graphc("import", "m.onnx", "--dim", "x.0=N", cwd=tmp_path)  # the fix it names
    assert result.returncode == 0 and result.stderr == ""
    assert 'x = ["N", 4]' in (tmp_path / "m.toml").read_text()
    assert graphc("import", "m.onnx", "--dim", "x.0=8", cwd=tmp_path).stderr == ""  # fixed on purpose


def test_import_of_a_model_with_a_named_dimension_says_nothing(tmp_path):
    fixed_model(tmp_path, ["batch", 4])
    result = graphc("import", "m.onnx", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
