"""scikit-learn estimators over a graphc spec: ``GraphcClassifier`` and ``GraphcRegressor``.

``fit`` compiles the spec (in memory), trains the generated module's ``Trainer`` with ``fit(X, y, epochs=...,
batch_size=..., seed=...)`` and keeps the trained params; ``predict``, ``predict_proba`` (the classifier) and
``score`` call the generated ``predict``. The estimators follow scikit-learn's conventions (parameters stored as
given, fitted attributes ending in ``_``), so they clone, pickle, and sit in a ``Pipeline`` or ``GridSearchCV``.

How a spec meets ``X`` and ``y``: the spec has two inputs; its first is ``X`` (shape ``["N", n_features]``: rows
along a named batch dimension) and the other is ``y``. For the classifier, ``y`` is an integer input, the
target of a ``cross_entropy`` whose logits are among the spec's outputs: ``classes_`` are the sorted labels of
the ``y`` given to ``fit`` (any labels: strings too), encoded as indices 0..C-1, and the logits' class count must
be C. For the regressor, ``y`` is a float input of shape ``["N"]`` or ``["N", k]`` and the first output is the
prediction. A spec whose sizes differ from the data's is a ``ValueError`` naming both.

``spec`` is a spec file's path, or a function ``spec(n_features, n_outputs)`` (``n_outputs``: the number of
classes, or of target columns) returning a path or a ``graphc.spec.Spec``, for models sized by the data.

scikit-learn is an optional extra: ``pip install 'graphc[sklearn]'``. Both estimators pass
``sklearn.utils.estimator_checks.check_estimator`` (tests/test_sklearn.py); scikit-learn itself skips
``check_array_api_input`` without ``SCIPY_ARRAY_API=1`` and its pandas checks without pandas.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError:
    raise ImportError("graphc.sklearn needs scikit-learn 1.6 or newer: pip install 'graphc[sklearn]'") from None

from .cli import compile_spec
from .codegen import classes_of
from .explain import node_link_json
from .files import load_module, npz_bytes, write_atomic
from .graph import INT_DTYPES, operands
from .spec import Spec, load_spec


_COMPILED = {}  # the last few compiled modules, by what they were compiled from
CACHED = 16


def compiled(spec: Spec, source: str):
    """``spec`` compiled, or the module compiled earlier from the same graph and settings (the same source: graphc
    is deterministic). A grid search fits one spec many times, and black costs most of a compile."""
    options = spec.options()
    stored = options.pop("init_values")
    key = (source, node_link_json(spec.graph.nx), repr(options), npz_bytes(stored) if stored else b"")
    if key not in _COMPILED:
        if len(_COMPILED) >= CACHED:
            del _COMPILED[next(iter(_COMPILED))]
        _COMPILED[key] = compile_spec(spec, source, "graphc.sklearn")
    return _COMPILED[key]


class _GraphcEstimator(BaseEstimator):
    """What both estimators share: compiling the spec, checking it against the data, training, the module."""

    def __init__(self, spec, *, epochs=None, batch_size=None, lr=None, seed=0, shuffle=True):
        self.spec = spec
        self.epochs = epochs  # None: the spec's [train] epochs
        self.batch_size = batch_size  # None: the spec's [train] batch_size
        self.lr = lr  # None: the spec's [train] lr
        self.seed = seed  # init_params(seed) and the shuffling of fit
        self.shuffle = shuffle

    def _compile(self, n_features: int, n_outputs: int):
        """The compiled module for data of these sizes, and the names of X, y and the output predict reads."""
        spec = self.spec(n_features, n_outputs) if callable(self.spec) else self.spec
        source = spec.path if isinstance(spec, Spec) else str(spec)
        spec = spec if isinstance(spec, Spec) else load_spec(spec)
        if spec.loss is None:
            raise ValueError(f"spec {source}: it has no [train] loss, so there is nothing to fit")
        module = compiled(spec, source or "a graphc.spec.Spec")
        G = module.graph
        inputs = [v for v in G if G.nodes[v]["op"] == "input"]
        if len(inputs) != 2:
            raise ValueError(f"spec {source}: an estimator's spec has two inputs, X then y; it has "
                             f"{len(inputs)} ({', '.join(inputs)})")
        x, y = inputs
        shape = G.nodes[x]["shape"]
        if len(shape) != 2 or not isinstance(shape[0], str) or shape[1] != n_features:
            raise ValueError(f"spec {source}: input {x!r} is {list(shape)}, but X has {n_features} features: X's "
                             f"input must be [\"N\", {n_features}] (rows along a named batch dimension)")
        return module, x, y, self._output(module, source, y, n_outputs)

    def _train(self, module, x, y, X, Y):
        self.module_source_ = module.source
        self._module = None
        mod = self._loaded()
        X = np.ascontiguousarray(X, dtype=mod.DTYPE)
        trainer = mod.Trainer(mod.init_params(self.seed), **({} if self.lr is None else {"lr": self.lr}))
        options = {k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size)) if v is not None}
        inputs = list(mod.INPUTS)
        self.loss_curve_ = trainer.fit(*(X if name == x else Y for name in inputs), shuffle=self.shuffle,
                                       seed=self.seed, **options)
        self.params_ = trainer.params
        self.input_name_, self.target_name_ = x, y
        return self

    def _loaded(self):
        """The generated module, imported from module_source_ (again after unpickling: a module does not pickle)."""
        if getattr(self, "_module", None) is None:
            with tempfile.TemporaryDirectory(prefix="graphc-sklearn-") as tmp:
                self._module = load_module(write_atomic(Path(tmp) / "graphc_estimator.py", self.module_source_))
        return self._module

    def _outputs(self, X):
        check_is_fitted(self, "params_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        mod = self._loaded()
        out = mod.predict(self.params_, **{self.input_name_: np.ascontiguousarray(X, dtype=mod.DTYPE)})
        return out if isinstance(out, tuple) else (out,)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_module", None)
        return state


class GraphcClassifier(ClassifierMixin, _GraphcEstimator):
    """A classifier trained by a graphc spec whose loss is ``cross_entropy(logits, y)`` on integer labels ``y``."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y has one class ({self.classes_[0]!r}): a classifier needs at least 2")
        module, x, y_name, self.logits_index_ = self._compile(X.shape[1], len(self.classes_))
        return self._train(module, x, y_name, X, codes.astype(np.int64))

    @staticmethod
    def _output(module, source, y, classes):
        """Which of predict's outputs are the logits of y's cross_entropy; checks the class count."""
        G = module.graph
        if G.nodes[y]["dtype"] not in INT_DTYPES or classes_of(G, y) is None:
            raise ValueError(f"spec {source}: input {y!r} (y) must be integer class indices, the target of a "
                             "cross_entropy")
        logits = next(operands(G, w)[0] for w in G.successors(y) if G.nodes[w]["op"] == "cross_entropy")
        outputs = module.schedule.outputs
        if logits not in outputs:
            raise ValueError(f"spec {source}: the outputs ({', '.join(outputs)}) must include {logits!r}, the "
                             "logits of the cross_entropy, for predict and predict_proba")
        count = classes_of(G, y)
        count = G.graph["dims"].get(count) if isinstance(count, str) else count
        if count != classes:
            raise ValueError(f"spec {source}: {logits!r} has {count} classes, but y has {classes}")
        return outputs.index(logits)

    def predict_proba(self, X):
        """The softmax of the logits: one row per sample, one column per class of ``classes_``."""
        logits = np.asarray(self._outputs(X)[self.logits_index_], dtype=np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, X):
        logits = self._outputs(X)[self.logits_index_]  # first: it raises NotFittedError before fit
        return self.classes_[np.argmax(logits, axis=1)]


class GraphcRegressor(RegressorMixin, _GraphcEstimator):
    """A regressor trained by a graphc spec whose first output predicts the float input ``y``."""

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), y_numeric=True, multi_output=True)
        Y = np.asarray(y, dtype=np.float64)
        self.target_shape_ = Y.shape[1:]
        module, x, y_name, _ = self._compile(X.shape[1], 1 if Y.ndim == 1 else Y.shape[1])
        wanted = module.graph.nodes[y_name]["shape"][1:]
        if wanted == (1,) and Y.ndim == 1:
            Y = Y[:, None]  # y = ["N", 1] in the spec, a vector in the data
        if Y.shape[1:] != wanted:
            raise ValueError(f"spec {self._source()}: input {y_name!r} (y) has shape {['N', *wanted]}, but y "
                             f"has shape {list(np.shape(y))}")
        return self._train(module, x, y_name, X, np.ascontiguousarray(Y, dtype=module.graph.graph["dtype"]))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # y of k columns, for a spec whose y is ["N", k]
        return tags

    @staticmethod
    def _output(module, source, y, targets):
        if module.graph.nodes[y]["dtype"] in INT_DTYPES:
            raise ValueError(f"spec {source}: input {y!r} (y) holds class indices: use GraphcClassifier")
        return 0

    def _source(self):
        return "(from a function)" if callable(self.spec) else self.spec

    def predict(self, X):
        pred = np.asarray(self._outputs(X)[0], dtype=np.float64)
        return pred.reshape(len(pred), *self.target_shape_)
