"""ONNX's own conformance data, run through graphc: import + compile + predict against the stored outputs.

The onnx wheel ships ``backend/test/data/pytorch-converted`` and ``pytorch-operator`` (PyTorch modules converted
by the ONNX project: a model and input/output protobufs) and ``onnx.backend.test.case.node``, the node test cases
(a model and data sets each). A case is *selected* when every op of its graph is one graphc imports
(``graphc.onnx.SUPPORTED``); the others are *skipped*, each with the first unsupported op, computed below.

A selected case either runs (import, compile, ``predict``, compared with the stored outputs) or is rejected at
import with graphc's one-line error (a supported op in a form graphc does not compute: a 3-D MatMul, integer
inputs, axes given as a run-time input). Both lists are recorded in ``tests/onnx/conformance.txt``: a case that
stops running, or a new rejection, fails ``test_conformance_summary``; ``--update-golden`` rewrites the record
after a reviewed change. Run with ``-s`` to print the counts.
"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import onnx  # in the test extra: make test installs it
from onnx import numpy_helper

import graphc as gc
from graphc.onnx import importer
from graphc.errors import GraphcError

pytestmark = pytest.mark.unformatted

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
RECORD = Path(__file__).parent / "onnx" / "conformance.txt"
SUITES = ("pytorch-converted", "pytorch-operator")
RTOL, ATOL = 1e-3, 1e-6  # what ONNX's own backend tests use (rtol 1e-3, atol 1e-7), atol for float32 sums


def read_dir(directory: Path):
    model = onnx.load(str(directory / "model.onnx"))
    sets = []
    for d in sorted(directory.glob("test_data_set_*")):
        ins = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(d.glob("input_*.pb"))]
        outs = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(d.glob("output_*.pb"))]
        sets.append((ins, outs))
    return model, sets


@lru_cache(maxsize=1)
def node_cases() -> dict:
    import onnx.backend.test.case.node as node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some cases divide by zero on purpose while making their data
        cases = node.collect_testcases(None)
    return {c.name: (c.model, [(list(i), list(o)) for i, o in c.data_sets]) for c in cases}


def all_cases() -> dict:
    """``{"suite/name": loader}`` for every case ONNX ships, in a stable order."""
    cases = {}
    for suite in SUITES:
        for d in sorted((DATA / suite).iterdir()):
            if (d / "model.onnx").is_file():
                cases[f"{suite}/{d.name}"] = (lambda d=d: read_dir(d))
    for name in sorted(node_cases()):
        cases[f"node/{name}"] = (lambda name=name: node_cases()[name])
    return cases


def unsupported_op(model) -> str | None:
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            return f"{n.domain}::{n.op_type}"
        if n.op_type not in importer.SUPPORTED:
            return n.op_type
    return None


def model_of(case: str):
    suite = case.split("/")[0]
    if suite == "node":
        return node_cases()[case.split("/", 1)[1]][0]
    return onnx.load(str(DATA / case / "model.onnx"), load_external_data=False)


CASES = all_cases()
# Computed: each case's first unsupported op (None: selected).
UNSUPPORTED = {case: unsupported_op(model_of(case)) for case in CASES}
SELECTED = [case for case, op in UNSUPPORTED.items() if op is None]
SKIPPED = {case: op for case, op in UNSUPPORTED.items() if op is not None}


def read_record() -> dict:
    """``{case: "run"|"rejected: <message>"|"skipped: <op>"}`` from tests/onnx/conformance.txt."""
    record = {}
    if RECORD.is_file():
        for line in RECORD.read_text().splitlines():
            if line and not line.startswith("#"):
                case, _, status = line.partition("  ")
                record[case] = status.strip()
    return record


@lru_cache(maxsize=None)  # the summary reuses what the parametrized tests computed
def run_case(case: str) -> str:
    """Import, compile and predict one selected case; "run" when every output matches, else the rejection."""
    model, sets = CASES[case]()
    try:
        imported = importer.import_model(model)
    except GraphcError as err:
        return f"rejected: {err}"
    initializers = {t.name for t in model.graph.initializer}
    idents = [imported.names.ident[v.name] for v in model.graph.input if v.name not in initializers]
    ins0 = sets[0][0]
    dims = {}
    for ident, x in zip(idents, ins0):
        for d, size in zip(imported.graph.nx.nodes[ident]["shape"], np.shape(x)):
            if isinstance(d, str):
                dims[d] = size
    module = gc.compile(imported.graph, outputs=imported.outputs, init_values=imported.values, dims=dims)
    mod = module.load()
    params = mod.init_params()
    for name, value in imported.values.items():  # init_params() gives back the model's initializers
        np.testing.assert_array_equal(params[name], value)
    accepted = inspect.signature(mod.predict).parameters
    for ins, outs in sets:
        got = mod.predict(params, **{k: x for k, x in zip(idents, ins) if k in accepted})
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(outs)
        for k, (a, b) in enumerate(zip(got, outs)):
            assert a.shape == b.shape, f"{case}: output {k}: shape {a.shape}, expected {b.shape}"
            assert a.dtype == b.dtype or b.dtype.kind != "f", f"{case}: output {k}: {a.dtype}, expected {b.dtype}"
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{case}: output {k}")
    return "run"


@pytest.mark.parametrize("case", SELECTED)
def test_selected_case(case):
    """Each selected case runs and matches ONNX's outputs, or is rejected with the recorded one-line error."""
    status = run_case(case)
    recorded = read_record().get(case)
    if recorded is not None:
        assert status == recorded
    else:  # a case new in this onnx version: it must run (a rejection needs a reviewed record)
        assert status == "run"


def summary() -> str:
    statuses = {case: run_case(case) for case in SELECTED}
    statuses.update({case: f"skipped: {op}" for case, op in SKIPPED.items()})
    counts = Counter(s.split(":")[0] for s in statuses.values())
    per_suite = Counter((case.split("/")[0], s.split(":")[0]) for case, s in statuses.items())
    lines = [f"# ONNX conformance data through graphc (onnx {onnx.__version__}); tests/test_onnx_conformance.py",
             f"# {len(statuses)} cases: {counts['run']} run and match, {counts['rejected']} rejected with a "
             f"one-line error (supported ops in forms graphc does not compute), {counts['skipped']} skipped "
             f"(an op graphc does not import)"]
    for suite in (*SUITES, "node"):
        lines.append(f"# {suite}: {per_suite[suite, 'run']} run, {per_suite[suite, 'rejected']} rejected, "
                     f"{per_suite[suite, 'skipped']} skipped")
    lines += [f"{case}  {statuses[case]}" for case in CASES]
    return "\n".join(lines) + "\n"


def test_conformance_summary(update_golden):
    """Every case's status, computed now, is the recorded one: selected cases run, skipped ones name their op."""
    text = summary()
    if update_golden or not RECORD.is_file():
        RECORD.write_text(text)
    print("\n".join(line for line in text.splitlines() if line.startswith("#")))
    recorded = RECORD.read_text()
    if text != recorded:
        now = {line.split("  ")[0]: line for line in text.splitlines() if not line.startswith("#")}
        then = {line.split("  ")[0]: line for line in recorded.splitlines() if not line.startswith("#")}
        changed = sorted(set(now.items()) ^ set(then.items()))
        pytest.fail(f"conformance changed (run with --update-golden after review): {changed[:10]}")
    assert sum(1 for s in read_record().values() if s == "run") >= 80


def test_selection_is_computed_from_the_ops():
    """The skipped cases are exactly those with an op outside SUPPORTED, and each names that op."""
    assert SELECTED and SKIPPED
    for case in SELECTED:
        assert {n.op_type for n in model_of(case).graph.node} <= set(importer.SUPPORTED)
    for case, op in SKIPPED.items():
        ops = {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model_of(case).graph.node}
        assert op in ops and op not in importer.SUPPORTED
    assert "pytorch-converted/test_Linear" in SELECTED and "node/test_gemm_all_attributes" in SELECTED
    assert "pytorch-converted/test_AvgPool2d" in SELECTED and "pytorch-converted/test_Conv2d_groups" in SELECTED
    assert SKIPPED["pytorch-converted/test_ELU"] == "Elu" and "pytorch-converted/test_BatchNorm2d_eval" in SELECTED
