"""graphc.sklearn: GraphcClassifier and GraphcRegressor pass scikit-learn's estimator checks, sit in a Pipeline
and a GridSearchCV, and train exactly what the generated Trainer trains."""

import pickle
import subprocess
import sys

import numpy as np
import pytest

from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import estimator_checks_generator

import graphc as gc
from graphc.cli import compile_spec
from graphc.sklearn import GraphcClassifier, GraphcRegressor
from graphc.spec import Spec, load_spec

pytestmark = pytest.mark.unformatted


def mlp(n_features, n_outputs, classify):
    """A 16-unit relu MLP sized by the data: the spec function the estimator checks need (their data sets vary)."""
    g = gc.Graph("mlp")
    X = g.input("X", ("N", n_features))
    y = g.input("y", ("N",), dtype="int64") if classify else g.input("y", ("N", n_outputs))
    W1, b1 = g.param("W1", (n_features, 16), scale=n_features**-0.5), g.param("b1", (16,), init="zeros")
    W2, b2 = g.param("W2", (16, n_outputs), scale=0.25), g.param("b2", (n_outputs,), init="zeros")
    out = gc.add(gc.matmul(gc.relu(X @ W1 + b1, name="h"), W2), b2, name="out")
    loss = gc.cross_entropy(out, y, name="loss") if classify else gc.mse(out, y, name="loss")
    return Spec(g, loss.name, ["out"], lr=1e-2, optimizer="adam", dims={"N": 16}, epochs=30, batch_size=16)


class MLP:
    """mlp as the estimator's spec function, with a stable repr (the checks' test ids show it: pytest-xdist's
    workers must collect the same ids)."""

    def __init__(self, classify):
        self.classify = classify

    def __call__(self, n_features, n_outputs):
        return mlp(n_features, n_outputs, self.classify)

    def __repr__(self):
        return f"MLP(classify={self.classify})"


# The one check not run: graphc's modules compute in NumPy, so the array API (CuPy or torch arrays through
# scikit-learn) is not supported; scikit-learn's check would also need SCIPY_ARRAY_API=1 and array-api-strict.
NOT_SUPPORTED = {"check_array_api_input"}


def check_name(check) -> str:
    return getattr(check, "func", check).__name__


CHECKS = [(estimator, check) for estimator in (GraphcClassifier(MLP(True)), GraphcRegressor(MLP(False)))
          for estimator, check in estimator_checks_generator(estimator, legacy=True)
          if check_name(check) not in NOT_SUPPORTED]


@pytest.mark.parametrize("estimator, check", CHECKS,
                         ids=[f"{type(e).__name__}-{i}-{check_name(c)}" for i, (e, c) in enumerate(CHECKS)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


IRIS = """
name = "iris"
[dims]
N = 16
[inputs]
X = ["N", 4]
labels = { shape = ["N"], dtype = "int64" }
[params]
W1 = { shape = [4, 16], init = "randn", scale = 0.5 }
b1 = { shape = [16], init = "zeros" }
W2 = { shape = [16, CLASSES], init = "randn", scale = 0.25 }
b2 = { shape = [CLASSES], init = "zeros" }
[nodes]
h = "relu(X @ W1 + b1)"
logits = "h @ W2 + b2"
loss = "cross_entropy(logits, labels)"
[train]
loss = "loss"
outputs = ["h", "logits"]
optimizer = "adam"
lr = 0.01
epochs = 40
batch_size = 16
"""


@pytest.fixture
def iris_spec(tmp_path):
    def write(classes=3):
        path = tmp_path / f"iris{classes}.toml"
        path.write_text(IRIS.replace("CLASSES", str(classes)))
        return path
    return write


@pytest.fixture(scope="module")
def iris():
    data = load_iris()
    return data.data, data.target_names[data.target]  # string labels: classes_ maps them


def test_a_spec_file_in_a_pipeline_learns_iris_with_string_labels(iris, iris_spec):
    X, y = iris
    model = make_pipeline(StandardScaler(), GraphcClassifier(str(iris_spec()), seed=1)).fit(X, y)
    clf = model[-1]
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"] and clf.n_features_in_ == 4
    assert model.score(X, y) > 0.9 and set(model.predict(X)) <= set(clf.classes_)
    proba = model.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], model.predict(X))
    assert len(clf.loss_curve_) == 40 * 10  # epochs x batches of 16 from 150 rows


def test_fit_trains_what_the_generated_trainer_trains(iris, iris_spec):
    X, y = iris
    codes = np.unique(y, return_inverse=True)[1]
    clf = GraphcClassifier(str(iris_spec()), epochs=3, batch_size=32, lr=0.05, seed=4).fit(X, y)
    mod = compile_spec(load_spec(iris_spec()), "iris").load()
    trainer = mod.Trainer(mod.init_params(4), lr=0.05)
    losses = trainer.fit(X, codes, epochs=3, batch_size=32, seed=4)
    np.testing.assert_allclose(clf.loss_curve_, losses, rtol=1e-12)
    for k in mod.PARAMS:
        np.testing.assert_allclose(clf.params_[k], trainer.params[k], rtol=1e-12, atol=1e-15)
    h, logits = mod.predict(trainer.params, X)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax, as torch.softmax documents it
    np.testing.assert_allclose(clf.predict_proba(X), shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-10)


def test_grid_search_clones_and_refits(iris, iris_spec):
    X, y = iris
    search = GridSearchCV(GraphcClassifier(str(iris_spec()), epochs=5), {"lr": [1e-4, 0.05]}, cv=3).fit(X, y)
    assert search.best_params_ == {"lr": 0.05} and search.best_estimator_.lr == 0.05
    assert search.best_estimator_.get_params()["spec"] == str(iris_spec())


def test_a_fitted_estimator_pickles(iris, iris_spec):
    X, y = iris
    clf = GraphcClassifier(str(iris_spec()), epochs=2).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), rtol=1e-12)


def test_a_regressor_fits_a_line(tmp_path):
    spec = tmp_path / "line.toml"
    spec.write_text('[dims]\nN = 8\n[inputs]\nX = ["N", 3]\ntarget = ["N", 1]\n[params]\n'
                    'w = { shape = [3, 1], init = "zeros" }\nb = { shape = [1], init = "zeros" }\n'
                    '[nodes]\npred = "X @ w + b"\nloss = "mse(pred, target)"\n'
                    '[train]\nloss = "loss"\noutputs = ["pred"]\noptimizer = "adam"\nlr = 0.05\nepochs = 60\n'
                    'batch_size = 8\n')
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3))
    y = X @ [1.5, -2.0, 0.5] + 0.3
    reg = GraphcRegressor(str(spec)).fit(X, y)
    assert reg.predict(X).shape == (64,) and reg.score(X, y) > 0.99
    np.testing.assert_allclose(reg.params_["w"][:, 0], [1.5, -2.0, 0.5], atol=0.05)


@pytest.mark.parametrize("make, message", [
    (lambda spec, X, y: GraphcClassifier(str(spec(3))).fit(X, y),
     "spec {path3}: 'logits' has 3 classes, but y has 2"),
    (lambda spec, X, y: GraphcClassifier(str(spec(2))).fit(X[:, :3], y),
     "spec {path2}: input 'X' is ['N', 4], but X has 3 features: X's input must be [\"N\", 3] (rows along a named "
     "batch dimension)"),
    (lambda spec, X, y: GraphcRegressor(str(spec(2))).fit(X, y),
     "spec {path2}: input 'labels' (y) holds class indices: use GraphcClassifier"),
])
def test_a_spec_that_does_not_fit_the_data_is_one_value_error(iris, iris_spec, make, message):
    X, y = iris
    X, y = X[y != "virginica"], (y[y != "virginica"] == "setosa").astype(int)  # 2 classes
    with pytest.raises(ValueError) as err:
        make(iris_spec, X, y)
    assert str(err.value) == message.format(path2=iris_spec(2), path3=iris_spec(3))


def test_scikit_learn_is_an_optional_extra(root):
    code = ("import sys; sys.modules['sklearn'] = None\nimport graphc\n"
            "try:\n    import graphc.sklearn\nexcept ImportError as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "graphc.sklearn needs scikit-learn 1.6 or newer: pip install 'graphc[sklearn]'\n"
