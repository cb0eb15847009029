"""Train the digits classifier of examples/digits.toml on scikit-learn's bundled digits and report its accuracy.

Run with `make digits`, or: .venv/bin/python examples/digits.py [--spec PATH] [--epochs N] [--module PATH]
[--params PATH]. --spec examples/digits_cnn.toml trains the convolutional one.

It loads the 1797 8x8 digits that ship with scikit-learn (no download), scales the pixels to [0, 1], holds out 360
rows for the test (stratified, random_state=0), compiles the spec with the graphc command (unless the module is
already there and newer than the spec), trains it with Trainer.fit in minibatches, prints the test accuracy and
saves the trained params with the module's save_params. The generated module needs only NumPy: predicting needs
nothing but it and the saved params (see the end of this script).
"""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
SPEC = HERE / "digits.toml"


def compiled_module(path: Path, spec_path: Path = SPEC):
    """The module graphc generates from the spec, compiled by the graphc command when missing or out of date."""
    if not path.exists() or path.stat().st_mtime < spec_path.stat().st_mtime:
        subprocess.run([sys.executable, "-m", "graphc", "compile", str(spec_path), "-o", str(path)], check=True)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(SPEC), help="the spec (examples/digits_cnn.toml: the CNN)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the spec's epochs")
    parser.add_argument("--module", default=str(HERE / "digits_model.py"), help="the generated module")
    parser.add_argument("--params", default=str(HERE / "digits_params.npz"), help="where the trained params go")
    parser.add_argument("--seed", type=int, default=0, help="for init_params and fit's shuffling")
    args = parser.parse_args(argv)

    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=360, random_state=0, stratify=digits.target)
    model = compiled_module(Path(args.module), Path(args.spec))
    # the images as the model takes them: rows of 64 pixels, or (N, 1, 8, 8) for the CNN
    X_train, X_test = (x.reshape(-1, *model._SHAPES["X"][1:]) for x in (X_train, X_test))
    epochs = model.EPOCHS if args.epochs is None else args.epochs
    print(f"digits: {len(X_train)} training rows, {len(X_test)} test rows; {model.OPTIMIZER} "
          f"{model.HYPERPARAMS}, batches of {model.BATCH_SIZE}, {epochs} passes over the data")

    trainer = model.Trainer(model.init_params(args.seed))
    trainer.fit(X_train, y_train, epochs=epochs, seed=args.seed, log_every=max(1, epochs // 10))

    predicted = np.argmax(model.predict(trainer.params, X_test), axis=1)
    correct = int(np.sum(predicted == y_test))
    print(f"test accuracy: {100 * correct / len(y_test):.2f}% ({correct} of {len(y_test)})")
    model.save_params(trainer.params, args.params)
    print(f"saved the trained params to {args.params}")

    # The shipped module and the saved params are all a user needs: one row in, one class out.
    params = model.load_params(args.params)
    print(f"first test image: predicted {int(np.argmax(model.predict(params, X_test[:1])))}, label {y_test[0]}")


if __name__ == "__main__":
    main()
