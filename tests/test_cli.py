"""The graphc command: the happy path, and bad specs that must end in one line, exit 2, and nothing lost."""

import shutil
import subprocess
import sys

import pytest


def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc", *args], capture_output=True, text=True, cwd=cwd)


def test_compile_happy_path(root, tmp_path):
    shutil.copy(root / "examples" / "two_layer.toml", tmp_path)
    result = graphc("compile", "two_layer.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "graphc: wrote two_layer.py"
    run = subprocess.run([sys.executable, "two_layer.py"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    first, last = (float(line.split()[-1]) for line in run.stdout.splitlines()[:-1:9])
    assert last < first


def test_lr_and_dtype_flags(root, tmp_path):
    shutil.copy(root / "examples" / "two_layer.toml", tmp_path)
    result = graphc("compile", "two_layer.toml", "-o", "m.py", "--lr", "0.002", "--dtype", "float32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "m.py").read_text()
    assert "    \"lr\": 0.002,\n" in text and "DTYPE = np.float32\n" in text
    assert "graphc compile two_layer.toml -o m.py --lr 0.002 --dtype float32" in text


@pytest.mark.parametrize(
    "spec, message",
    [
        ("unknown_op", "unknown_op.toml: node 'h': unknown op 'mish' (known: adaptive_avg_pool2d, add, attention, "
                       "avg_pool2d, batch_norm, binary_cross_entropy_with_logits, clip, concat, conv1d, conv2d, "
                       "conv_transpose2d, cross_entropy, div, dropout, embedding, erf, exp, flatten, gelu, layer_norm, "
                       "leaky_relu, log, log_softmax, matmul, max, max_pool2d, mean, min, mse, mul, neg, pow, relu, "
                       "reshape, rms_norm, sigmoid, silu, slice, softmax, softplus, sqrt, sub, sum, tanh, transpose, "
                       "where)"),
        ("shape_mismatch", "shape_mismatch.toml: node 'h': h = matmul(X, W): shapes (32, 100) and (50, 10) "
                           "do not align (100 != 50)"),
        ("undefined_name", "undefined_name.toml: node 'h': undefined name 'V'"),
    ],
)
def test_bad_spec_is_one_line_exit_2_and_output_untouched(spec, message, root, tmp_path):
    shutil.copy(root / "tests" / "specs" / f"{spec}.toml", tmp_path)
    out = tmp_path / "model.py"
    out.write_bytes(b"# precious: an earlier, working module\n")
    result = graphc("compile", f"{spec}.toml", "-o", "model.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"graphc: error: {message}\n"
    assert result.stdout == ""
    assert out.read_bytes() == b"# precious: an earlier, working module\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{spec}.toml", "model.py"])


def test_help_lists_compile(tmp_path):
    result = graphc("--help", cwd=tmp_path)
    assert result.returncode == 0 and "compile" in result.stdout
    result = graphc("compile", "missing.toml", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "graphc: error: missing.toml: cannot read the spec: No such file or directory\n"
