"""Data-parallel training of a generated module on a Dask cluster (``dask.distributed``).

The batch is split along its batch dimension into one shard per worker and the shards are scattered once. Each
step then makes one round trip: the params go out (one broadcast), every worker runs the generated
``value_and_grad`` on its shard, the driver gathers the results, combines them (weighted by shard rows for a
``'mean'`` loss, summed for a ``'sum'`` loss) and applies the optimizer with the generated
``Trainer.apply_gradients``: the same update, sharing the same optimizer state, as ``Trainer.step`` on the whole
batch. The params live on the driver; a step either completes or changes nothing.

    from dask.distributed import Client
    from graphc.dask import DataParallelTrainer

    with Client("tcp://scheduler:8786") as client:
        dp = DataParallelTrainer(client, "digits.py", lr=1e-3)   # a module graphc generated
        dp.scatter(X, labels)                                     # once: one shard per worker
        losses = dp.fit(100)                                      # 100 full-batch steps
        dp.params                                                 # the trained params (driver side)

The workers need NumPy and ``distributed`` only: the generated module is shipped with ``client.upload_file``
and the tasks call it by reference, so graphc itself need not be installed there. The generated module knows
nothing of Dask. Dask is an optional extra, imported only when a driver is made: ``pip install 'graphc[dask]'``.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import sys
import tempfile
import time
from pathlib import Path

from .errors import DataParallelError, GraphcError
from .files import SPEC_SUFFIXES, load_module, read_regular
from .ops import REDUCTION

__all__ = ["DataParallelError", "DataParallelTrainer"]

EXTRA_HINT = "graphc's Dask driver needs the dask extra: pip install 'graphc[dask]'"


def _require_distributed():
    """Import ``dask.distributed`` or raise one clear ImportError naming the extra."""
    try:
        from dask import distributed
    except ImportError:
        raise ImportError(EXTRA_HINT) from None
    return distributed


_MODULE_DIR: list[Path] = []  # the directory of the driver's copies of the modules (one per process)


def _module_dir() -> Path:
    if not _MODULE_DIR:
        import atexit
        import shutil

        path = Path(tempfile.mkdtemp(prefix="graphc-dask-"))
        atexit.register(shutil.rmtree, path, True)
        _MODULE_DIR.append(path)
    return _MODULE_DIR[0]


def _read_module(module) -> tuple[str, bytes | None, str, str]:
    """(source text, params file bytes or None, file stem, description) of a generated module given as a path or
    a ``CompiledModule``. The params file is the ``.npz`` beside a module whose params have ``init = "file"``."""
    if hasattr(module, "source") and hasattr(module, "save"):
        with tempfile.TemporaryDirectory(prefix="graphc-dask-") as tmp:
            path = Path(module.save(Path(tmp) / f"{module.name}.py"))
            npz = path.with_suffix(".npz")
            return (module.source, npz.read_bytes() if npz.exists() else None, module.name,
                    f"the compiled module {module.name!r}")
    path = Path(module)
    if path.suffix.lower() in SPEC_SUFFIXES:
        raise ValueError(f"{str(path)!r} is a spec: DataParallelTrainer takes a module graphc generated from it "
                         f"(graphc compile {path.name}, or graphc.compile(...))")
    try:
        source = read_regular(path, "generated module").decode("utf-8")
        npz = path.with_suffix(".npz")
        return source, read_regular(npz, "params file") if npz.exists() else None, path.stem, str(path)
    except UnicodeDecodeError:
        raise ValueError(f"cannot read the generated module {str(path)!r}: not UTF-8 text") from None
    except GraphcError as err:
        raise ValueError(str(err)) from None


def _load_module(source: str, npz: bytes | None, stem: str):
    """Import the module under a name derived from its content (``_graphc_<stem>_<hash>``), from a copy in the
    driver's module directory (its params file beside it), and register it in ``sys.modules``: its functions then
    pickle by reference to that name, which the workers import from the uploaded copy. Returns the module and the
    path of the copy."""
    digest = hashlib.sha256(source.encode("utf-8") + (npz or b"")).hexdigest()[:16]
    name = f"_graphc_{re.sub(r'[^0-9A-Za-z_]', '_', stem)}_{digest}"
    path = _module_dir() / f"{name}.py"
    module = sys.modules.get(name)
    if module is None:
        path.write_text(source, encoding="utf-8")
        if npz is not None:
            path.with_suffix(".npz").write_bytes(npz)
        module = load_module(path, name, register=True)
    return module, path


def _check_module(mod, where: str):
    """The generated module has what the driver needs (section 13 of the design): say what is missing."""
    missing = [n for n in ("INPUTS", "PARAMS", "BATCH_DIM", "LOSS_REDUCTION", "_SHAPES", "value_and_grad", "Trainer")
               if not hasattr(mod, n)]
    if not missing and not hasattr(mod.Trainer, "apply_gradients"):
        missing = ["Trainer.apply_gradients"]
    if missing:
        raise ValueError(f"{where} has no {', '.join(missing)}: it was generated without training support or by "
                         "an older graphc; compile it again with this one")
    running = getattr(mod, "RUNNING", {})
    if running:
        node, op = next(iter(running.items()))
        raise ValueError(f"{where}: {op} {node!r} updates its running statistics in training, which the workers' "
                         "shards cannot share: data-parallel training refuses it (train on one process)")
    if mod.BATCH_DIM is None:
        raise ValueError(f"{where} has no batch dimension (BATCH_DIM is None): data-parallel training splits the "
                         "batch along a named dimension, e.g. X = [\"N\", 64]")
    if mod.LOSS_REDUCTION not in REDUCTION:
        raise ValueError(f"{where}: the loss is not a mean or a sum over the batch rows (LOSS_REDUCTION is "
                         f"{mod.LOSS_REDUCTION!r}), so the shards' gradients cannot be combined into the batch's")


def batch_rows(arrays: dict, batched: list, dim: str) -> int:
    """The number of rows of the batch: axis 0 of every batched input, the same for all of them, not 0."""
    rows = None
    for k in batched:
        if arrays[k].ndim == 0:
            raise ValueError(f"input {k!r}: expected an array with the batch dimension {dim!r} as axis 0, "
                             "got a scalar")
        n = arrays[k].shape[0]
        if rows is None:
            rows, first = n, k
        elif n != rows:
            raise ValueError(f"dimension {dim!r}: input {first!r} has {rows} rows, input {k!r} has {n}")
    if rows == 0:
        raise ValueError(f"the batch is empty (dimension {dim!r} is 0)")
    return rows


class DataParallelTrainer:
    """Train a generated module data-parallel on a Dask cluster: the driver keeps the params and the optimizer
    (a local ``Trainer``); the workers compute the gradients of their shards of the batch.

    ``client``: a ``dask.distributed.Client``. ``module``: the path of a module graphc generated, or a
    ``CompiledModule``. ``params``: the params dict to train, updated in place (default: the module's
    ``init_params(seed)``). ``workers``: the worker addresses to use (default: every worker of the cluster when
    ``scatter`` is called). ``timeout``: seconds a step may wait for its results before it fails (default: no
    limit; a worker that dies fails the step at once anyway). ``trainer_overrides``: keyword arguments of the
    module's ``Trainer`` (``lr``, ``momentum``, ``betas``, ...). ``trainer``: instead of params and overrides, a
    ``Trainer`` of the same module to go on from (its params and optimizer state), e.g. the ``.trainer`` of a
    driver whose client closed.
    """

    def __init__(self, client, module, params=None, *, seed=0, workers=None, timeout=None, trainer=None,
                 **trainer_overrides):
        _require_distributed()
        self.client = client
        source, npz, stem, where = _read_module(module)
        self.module, path = _load_module(source, npz, stem)
        _check_module(self.module, where)
        mod = self.module
        if trainer is None:
            self.trainer = mod.Trainer(mod.init_params(seed) if params is None else params, **trainer_overrides)
        elif type(trainer).__module__ == mod.__name__ and params is None and not trainer_overrides:
            # (by module name, not isinstance: an upload of the module to a scheduler in this process reloads it)
            self.trainer = trainer  # going on from another driver's state (params and optimizer state)
        else:
            raise TypeError(f"trainer= takes a Trainer of {where} (e.g. another DataParallelTrainer's .trainer), "
                            "without params= or Trainer keyword arguments")
        self.steps = 0  # data-parallel steps this driver completed
        self.shard_rows: list[int] = []  # rows of each shard, in worker order
        self.workers: list[str] = []  # the worker holding each shard
        self._requested_workers = None if workers is None else list(workers)
        self.timeout = timeout
        self._lost = ""  # why the shards were dropped, for the next step's message
        self._shards: list[list] = []  # per shard, one future per input of value_and_grad
        self._inputs = [name for name, p in inspect.signature(mod.value_and_grad).parameters.items()
                        if p.kind == p.POSITIONAL_OR_KEYWORD][1:]  # not the keyword-only mode arguments
        # Ship the module: every worker (and any that joins later) imports it under the same name.
        try:
            client.upload_file(str(path))
        except Exception as err:
            raise DataParallelError(f"cannot ship {where} to the workers: {type(err).__name__}: {err}") from err

    # ---- the driver-side state ----
    @property
    def params(self) -> dict:
        """The params (the dict the local Trainer updates in place)."""
        return self.trainer.params

    @property
    def rows(self) -> int:
        """Rows of the scattered batch (0 before ``scatter``)."""
        return sum(self.shard_rows)

    # ---- data ----
    def scatter(self, *inputs, **named_inputs) -> DataParallelTrainer:
        """Split the batch (the inputs of the loss, as ``Trainer.step`` takes them) along the batch dimension into
        one shard per worker, and send each shard to its worker once. Inputs without the batch dimension go whole
        to every worker. Replaces any data scattered before (also the way to go on after a worker was lost)."""
        import numpy as np

        given = self._bind(inputs, named_inputs)
        arrays = {k: np.asarray(given[k]) for k in self._inputs}
        dim = self.module.BATCH_DIM
        batched = [k for k in self._inputs if (self.module._SHAPES.get(k) or (None,))[0] == dim]
        if not batched:
            raise ValueError(f"no input of the loss has the batch dimension {dim!r} as its axis 0")
        rows = batch_rows(arrays, batched, dim)
        self._check_reduction(arrays, batched, rows)
        try:
            workers = self._requested_workers or sorted(self.client.nthreads())
        except Exception as err:
            raise DataParallelError(f"cannot reach the cluster: {type(err).__name__}: {err}") from err
        if not workers:
            raise DataParallelError("the cluster has no workers")
        count = min(len(workers), rows)
        workers = workers[:count]
        sizes = [rows // count + (i < rows % count) for i in range(count)]
        self.release()
        try:
            shards = self._send(arrays, batched, workers, sizes)
        except Exception as err:
            raise DataParallelError(f"cannot scatter the data: {type(err).__name__}: {err}") from err
        self._shards, self.workers, self.shard_rows, self._lost = shards, workers, sizes, ""
        return self

    def _bind(self, inputs: tuple, named_inputs: dict) -> dict:
        """scatter()'s arguments by input name, as Python binds a call's (TypeError for a wrong call)."""
        names = self._inputs
        if len(inputs) > len(names):
            raise TypeError(f"scatter() takes the inputs {', '.join(names)}: got {len(inputs)} positional values")
        given = dict(zip(names, inputs))
        for k, v in named_inputs.items():
            if k not in names:
                raise TypeError(f"scatter(): {k!r} is not an input of the loss (its inputs: {', '.join(names)})")
            if k in given:
                raise TypeError(f"scatter(): input {k!r} given twice")
            given[k] = v
        missing = [k for k in names if k not in given]
        if missing:
            raise TypeError(f"scatter(): missing input(s) {', '.join(missing)} (the loss takes {', '.join(names)})")
        return given

    def _send(self, arrays: dict, batched: list, workers: list, sizes: list) -> list:
        """The unbatched inputs to every worker, each worker's rows of the batched ones to it: per worker, its
        futures in input order."""
        client, names = self.client, self._inputs
        whole = [k for k in names if k not in batched]
        shared = dict(zip(whole, client.scatter([arrays[k] for k in whole], workers=workers, broadcast=True,
                                                hash=False))) if whole else {}
        shards, lo = [], 0
        for w, size in zip(workers, sizes):
            parts = [arrays[k][lo:lo + size] for k in batched]
            sent = dict(zip(batched, client.scatter(parts, workers=[w], hash=False)))
            shards.append([sent[k] if k in sent else shared[k] for k in names])
            lo += size
        return shards

    def _check_reduction(self, arrays: dict, batched: list, rows: int):
        """The loss must combine over the shards as LOSS_REDUCTION says, or the combined gradients are wrong (a loss
        ``0.5 * mse(...)`` is a mean, a sum plus a penalty on the params is neither). Checked on the driver at the
        current params, on up to 96 rows split unevenly in two: their combined loss must equal their loss."""
        import numpy as np

        mod = self.module
        n = min(rows, 96)
        if n < 2:
            return
        cut = n // 3

        def loss(lo, hi):  # (a wrong input raises the module's ValueError here, naming it)
            return mod.loss(self.trainer.params, **{k: (v[lo:hi] if k in batched else v) for k, v in arrays.items()})

        whole, a, b = loss(0, n), loss(0, cut), loss(cut, n)
        combined = (cut * a + (n - cut) * b) / n if mod.LOSS_REDUCTION == "mean" else a + b
        if not (np.isfinite(whole) and np.isfinite(combined)):
            return  # nothing to compare
        finfo = np.finfo(getattr(mod, "DTYPE", np.float64))
        if abs(combined - whole) > float(finfo.eps) ** 0.5 * max(abs(whole), abs(combined), float(finfo.tiny)):
            raise ValueError(
                f"the loss is not a {mod.LOSS_REDUCTION} over the batch rows, as the module's LOSS_REDUCTION says: "
                f"on {n} rows it is {whole:.6g}, its parts of {cut} and {n - cut} rows combine to {combined:.6g}; "
                "data-parallel training would apply wrong gradients")

    def release(self):
        """Drop the scattered shards (the cluster frees them). The params stay."""
        self._shards, self.workers, self.shard_rows = [], [], []

    close = release

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    # ---- training ----
    def step(self) -> float:
        """One data-parallel step on the whole scattered batch; returns the batch's loss before the update (as
        ``Trainer.step`` does). On any failure raises ``DataParallelError`` and changes nothing."""
        if not self._shards:
            raise DataParallelError(f"no data on the workers{self._lost}: call scatter(*inputs) first")
        n = self.steps + 1
        client, futures = self.client, []
        deadline = None if self.timeout is None else time.monotonic() + self.timeout

        def left():  # seconds left of the step's timeout: every wait of the step is bounded by it
            return max(deadline - time.monotonic(), 0.001)

        try:
            # The params go out once per step: one broadcast to the shards' workers, then one task per shard.
            # (Client.scatter's own timeout= does not bound a worker that stops answering: the call is bounded as
            # Client.scatter makes it, through Client.sync.)
            [params] = client.sync(client._scatter, [self.trainer.params], workers=self.workers, broadcast=True,
                                   hash=False, callback_timeout=None if deadline is None else left())
            fn = self.module.value_and_grad
            futures = [client.submit(fn, params, *shard, workers=[w], allow_other_workers=False, pure=False)
                       for w, shard in zip(self.workers, self._shards)]
            if deadline is None:
                results = client.gather(futures)
            else:
                _require_distributed().wait(futures, timeout=left())
                results = [f.result(timeout=left()) for f in futures]
            loss, grads = self._combine(results)
        except Exception as err:
            self._cancel(futures)
            raise DataParallelError(self._failure(n, err)) from err
        try:
            self.trainer.apply_gradients(grads)  # check_finite: FloatingPointError before anything is applied
        except FloatingPointError as err:
            raise DataParallelError(f"data-parallel step {n} failed: {err}") from err
        self.steps = n
        return loss

    def fit(self, steps: int, *, log_every: int = 0) -> list[float]:
        """Run ``step`` ``steps`` times; print the loss every ``log_every`` steps; return the losses. A failure
        raises ``DataParallelError`` with the params as after the last completed step (``self.steps``)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        losses = []
        for _ in range(steps):
            losses.append(self.step())
            if log_every and self.steps % log_every == 0:
                print(f"step {self.steps:>5}: loss {losses[-1]:.6g}")
        return losses

    def _combine(self, results):
        """The batch's loss and gradients from the shards' ``(loss, grads)``, in shard order (deterministic)."""
        import numpy as np

        total = self.rows
        mean = self.module.LOSS_REDUCTION == "mean"
        weights = [r / total for r in self.shard_rows] if mean else [None] * len(results)
        loss, grads = 0.0, {}
        for (shard_loss, shard_grads), w in zip(results, weights):
            loss += shard_loss if w is None else w * shard_loss
            for name in self.module.TRAINABLE:
                g = shard_grads[name]
                if name not in grads:
                    grads[name] = acc = np.array(g, copy=True)  # fresh and writable (also for a 0-d gradient)
                    if w is not None:
                        acc *= w
                elif w is None:
                    grads[name] += g
                else:
                    grads[name] += g * w
        return float(loss), grads

    def _cancel(self, futures):
        try:
            self.client.cancel(futures)
        except Exception:
            pass

    def _failure(self, n: int, err: BaseException) -> str:
        """The message of a failed step; forgets the shards when a worker holding one has left."""
        timed_out = isinstance(err, TimeoutError) and not str(err)
        why = f"{type(err).__name__}: {f'no answer within the timeout ({self.timeout} s)' if timed_out else err}"
        if getattr(self.client, "status", "running") in ("closing", "closed"):
            self.release()
            self._lost = " (the client closed)"
            return (f"data-parallel step {n} failed: the Dask client is closed; the params are as after step {n - 1}, "
                    f"nothing of step {n} was applied; to go on, make a DataParallelTrainer on a new client with "
                    "trainer=<this one's .trainer>")
        lost = []
        try:
            alive = set(self.client.nthreads())
            lost = [w for w in self.workers if w not in alive]
        except Exception:
            pass  # the client itself is gone; its shards go with it
        else:
            if not lost:
                return (f"data-parallel step {n} failed: {why}; the params are as after "
                        f"step {n - 1}, nothing of step {n} was applied")
        self.release()
        self._lost = f" (they were lost in step {n})"
        gone = f"worker(s) {', '.join(lost)} left the cluster" if lost else "the cluster cannot be reached"
        return (f"data-parallel step {n} failed: {why}; {gone}; the params are as after "
                f"step {n - 1}, nothing of step {n} was applied; call scatter(*inputs) again to re-shard the data "
                "on the workers left")
