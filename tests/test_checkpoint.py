"""Checkpoints and params I/O (DESIGN §11): state_dict / load_state_dict, Trainer.save / Trainer.load (atomic .npz,
bit-for-bit resume), save_params / load_params (every name, shape and dtype checked)."""

import contextlib
import os
import re
import signal
import stat

import numpy as np
import numpy.lib.format
import pytest

import graphc as gc
from crafted import npz_with_headers
from gradcheck import random_params

pytestmark = pytest.mark.unformatted

OPTIMIZERS = {
    "sgd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "adam": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.01},
    "adamw": {"optimizer": "adamw", "lr": 0.01},
}


def compile_model(hidden=6, **kw):
    g = gc.Graph("ckpt")
    X, y = g.input("X", ("N", 5)), g.input("y", ("N", 3))
    W1, b1 = g.param("W1", (5, hidden), scale=0.5), g.param("b1", (hidden,), init="zeros")
    W2, b2 = g.param("W2", (hidden, 3), scale=0.5), g.param("b2", (3,), init="zeros")
    pred = gc.add(gc.matmul(gc.relu(X @ W1 + b1, name="h"), W2), b2, name="pred")
    return gc.compile(g, loss=gc.mse(pred, y, name="loss"), outputs=[pred], dims={"N": 8}, **kw).load()


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def mod(request):
    return compile_model(**OPTIMIZERS[request.param])


@pytest.fixture(scope="module")
def adam_mod():
    return compile_model(**OPTIMIZERS["adam"])


def data(count, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [8, 8, 3, 8, 5, 8, 8, 1, 8, 8][:count]  # batch sizes vary, as in fit: several workspaces
    return [(rng.standard_normal((n, 5)), rng.standard_normal((n, 3))) for n in sizes]


def copy(d):
    return {k: v.copy() for k, v in d.items()}


def assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def trained(mod, steps, params=None):
    trainer = mod.Trainer(copy(params if params is not None else random_params(mod, seed=1)))
    for X, y in data(10)[:steps]:
        trainer.step(X, y)
    return trainer


# ---- resume: k steps + save + load + m steps == k + m steps, bit for bit -----------------------------------------

@pytest.mark.parametrize("k", [1, 4])
def test_save_load_resume_is_bit_for_bit(mod, tmp_path, k):
    params = random_params(mod, seed=1)
    batches = data(10)
    uninterrupted = mod.Trainer(copy(params))
    for X, y in batches:
        uninterrupted.step(X, y)

    first = mod.Trainer(copy(params))
    for X, y in batches[:k]:
        first.step(X, y)
    path = tmp_path / "ckpt.npz"
    first.save(path)

    fresh_params = mod.init_params(99)  # other values: everything must come from the file
    resumed = mod.Trainer(fresh_params)  # its values become the views of the Trainer's flat storage
    arrays = {name: id(a) for name, a in fresh_params.items()}
    resumed.load(path)
    assert resumed.steps == k
    assert {name: id(a) for name, a in resumed.params.items()} == arrays  # loaded into the existing arrays
    assert resumed.params is fresh_params
    for X, y in batches[k:]:
        resumed.step(X, y)
    assert resumed.steps == uninterrupted.steps == len(batches)
    assert_same(resumed.params, uninterrupted.params)
    assert_same(resumed.state_dict(), uninterrupted.state_dict())


def test_saved_file_is_a_plain_npz_of_the_state_dict(mod, tmp_path):
    trainer = trained(mod, 3)
    path = tmp_path / "ckpt.npz"
    trainer.save(path)
    state = trainer.state_dict()
    with np.load(path, allow_pickle=False) as f:  # no pickled objects: safe to load from anywhere
        assert sorted(f.files) == sorted(state)
        assert_same({k: f[k] for k in state}, state)


def test_save_replaces_an_existing_checkpoint(adam_mod, tmp_path):
    path = tmp_path / "ckpt.npz"
    trained(adam_mod, 1).save(path)
    later = trained(adam_mod, 5)
    later.save(path)
    resumed = adam_mod.Trainer(adam_mod.init_params())
    resumed.load(path)
    assert resumed.steps == 5
    assert_same(resumed.state_dict(), later.state_dict())
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # no temporary file left behind


# ---- state_dict / load_state_dict --------------------------------------------------------------------------------

def test_state_dict_round_trip(mod):
    source = trained(mod, 3)
    state = source.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())  # a flat dict of arrays
    assert len(state) > len(mod.PARAMS)  # params, and the optimizer's state and step count besides
    snapshot = copy(state)

    target = mod.Trainer(mod.init_params(7))
    arrays = {name: id(a) for name, a in target.params.items()}
    target.load_state_dict(state)
    assert {name: id(a) for name, a in target.params.items()} == arrays  # copied into the existing arrays
    assert target.steps == 3
    assert_same(target.state_dict(), snapshot)

    # the two trainers now share nothing: training one leaves the other (and the dict loaded) as they were
    for X, y in data(3, seed=5):
        target.step(X, y)
    assert_same(source.state_dict(), snapshot)
    assert_same(state, snapshot)
    for X, y in data(3, seed=5):
        source.step(X, y)
    assert_same(target.state_dict(), source.state_dict())


def test_state_dict_carries_the_step_count_and_optimizer_state(adam_mod):
    """Loading only the params is not resuming: Adam's moments and its step count are in the state too."""
    source = trained(adam_mod, 4)
    params_only = adam_mod.Trainer(copy(source.params))
    full = adam_mod.Trainer(adam_mod.init_params())
    full.load_state_dict(source.state_dict())
    (X, y), = data(1, seed=9)
    for t in (source, params_only, full):
        t.step(X, y)
    assert_same(full.params, source.params)
    assert any(not np.array_equal(params_only.params[k], source.params[k]) for k in source.params)


# ---- a checkpoint of another model: ValueError, nothing changed --------------------------------------------------

def assert_untouched(trainer, before_state, before_steps):
    assert trainer.steps == before_steps
    assert_same(trainer.state_dict(), before_state)


def test_checkpoint_of_another_shape_is_refused(adam_mod, tmp_path):
    other = compile_model(hidden=9, **OPTIMIZERS["adam"])
    path = tmp_path / "other.npz"
    trained(other, 2).save(path)
    trainer = trained(adam_mod, 1)
    before = copy(trainer.state_dict())
    with pytest.raises(ValueError, match="W1"):  # the first param, in PARAMS order, whose shape differs
        trainer.load(path)
    assert_untouched(trainer, before, 1)
    with pytest.raises(ValueError, match="W1"):
        trainer.load_state_dict(trained(other, 2).state_dict())
    assert_untouched(trainer, before, 1)


def test_checkpoint_of_another_optimizer_is_refused(adam_mod, tmp_path):
    sgd = compile_model(**OPTIMIZERS["sgd"])  # the same params, other optimizer state
    path = tmp_path / "sgd.npz"
    trained(sgd, 2).save(path)
    trainer = trained(adam_mod, 1)
    before = copy(trainer.state_dict())
    with pytest.raises(ValueError):
        trainer.load(path)
    assert_untouched(trainer, before, 1)
    with pytest.raises(ValueError):
        trainer.load_state_dict(trained(sgd, 2).state_dict())
    assert_untouched(trainer, before, 1)


@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_a_bad_entry_names_it_and_changes_nothing(mod, tmp_path, change):
    trainer = trained(mod, 2)
    before = copy(trainer.state_dict())
    state = trained(mod, 3).state_dict()
    # the last array entry (an optimizer state or a param): every entry is checked before any is copied
    key = [k for k, v in state.items() if v.ndim and v.dtype.kind == "f"][-1]
    if change == "shape":
        state[key] = np.zeros(state[key].shape + (2,))
    else:
        state[key] = state[key].astype(np.float32)
    with pytest.raises(ValueError, match=re.escape(key)):
        trainer.load_state_dict(state)
    assert_untouched(trainer, before, 2)
    path = tmp_path / "bad.npz"
    np.savez(path, **state)
    with pytest.raises(ValueError, match=re.escape(key)):
        trainer.load(path)
    assert_untouched(trainer, before, 2)


def test_a_missing_entry_names_it_and_changes_nothing(mod, tmp_path):
    """Whichever entry of the state is missing (params, optimizer state, step count, ...): ValueError naming it."""
    trainer = trained(mod, 2)
    before = copy(trainer.state_dict())
    full = trained(mod, 3).state_dict()
    for key in full:
        state = {k: v for k, v in full.items() if k != key}
        with pytest.raises(ValueError, match=re.escape(key)):
            trainer.load_state_dict(state)
        assert_untouched(trainer, before, 2)
        path = tmp_path / "bad.npz"
        np.savez(path, **state)
        with pytest.raises(ValueError, match=re.escape(key)):
            trainer.load(path)
        assert_untouched(trainer, before, 2)


# ---- atomic saves ------------------------------------------------------------------------------------------------

def failing_write_array(fp, array, *args, **kwargs):
    fp.write(b"\x93NUMPY half an array")
    raise OSError(28, "No space left on device")


def test_a_failing_save_leaves_the_existing_file_intact(adam_mod, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    trained(adam_mod, 1).save(path)
    original = path.read_bytes()
    trainer = trained(adam_mod, 3)
    monkeypatch.setattr(numpy.lib.format, "write_array", failing_write_array)  # the disk fills up mid-save
    with pytest.raises(OSError):
        trainer.save(path)
    with pytest.raises(OSError):
        adam_mod.save_params(trainer.params, path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # no temporary file left behind
    resumed = adam_mod.Trainer(adam_mod.init_params())
    resumed.load(path)
    assert resumed.steps == 1


def test_save_into_a_missing_directory_or_onto_a_directory_fails_cleanly(adam_mod, tmp_path):
    trainer = trained(adam_mod, 1)
    (tmp_path / "keep.npz").write_bytes(b"unrelated")
    (tmp_path / "adir").mkdir()
    for bad in (tmp_path / "missing" / "ckpt.npz", tmp_path / "adir"):
        for save in (trainer.save, lambda p: adam_mod.save_params(trainer.params, p)):
            with pytest.raises((OSError, ValueError)):
                save(bad)
    assert sorted(os.listdir(tmp_path)) == ["adir", "keep.npz"]
    assert os.listdir(tmp_path / "adir") == []
    assert (tmp_path / "keep.npz").read_bytes() == b"unrelated"


def test_saves_keep_the_mode_of_the_file_they_replace_and_reach_the_disk(adam_mod, tmp_path, monkeypatch):
    """As graphc's own writes: the old file's mode (not mkstemp's 0600), 0644 for a new file, fsync before the
    rename."""
    trainer = trained(adam_mod, 1)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    for save in (trainer.save, lambda p: adam_mod.save_params(trainer.params, p)):
        path = tmp_path / "state.npz"
        save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        os.chmod(path, 0o640)
        save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        path.unlink()
    assert len(synced) == 4


@contextlib.contextmanager
def no_hang(seconds=20):
    """A read that blocked (on a FIFO) fails the test instead of hanging it."""
    def fail(*_):
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_special_files_are_neither_replaced_nor_read(adam_mod, tmp_path):
    """Run as root, os.replace would turn a FIFO (or /dev/null) into a regular file; reading one blocks."""
    trainer = trained(adam_mod, 1)
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    for save in (trainer.save, lambda p: adam_mod.save_params(trainer.params, p)):
        with pytest.raises(ValueError, match=f"cannot write {re.escape(repr(str(fifo)))}: it is not a regular file"):
            save(fifo)
    with no_hang():
        with pytest.raises(ValueError, match=f"params {re.escape(repr(str(fifo)))}: it is not a regular file"):
            adam_mod.load_params(fifo)
        with pytest.raises(ValueError, match=f"checkpoint {re.escape(repr(str(fifo)))}: it is not a regular file"):
            trainer.load(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo.npz"]


@pytest.fixture
def reads(monkeypatch):
    """The shapes of the arrays whose data is read from .npz files."""
    shapes, real = [], numpy.lib.format.read_array

    def read_array(fp, *args, **kwargs):
        array = real(fp, *args, **kwargs)
        shapes.append(array.shape)
        return array

    monkeypatch.setattr(numpy.lib.format, "read_array", read_array)
    return shapes


def test_huge_arrays_claimed_by_the_headers_are_refused_before_any_data_is_read(adam_mod, tmp_path, reads):
    """A 3.7 MB .npz with a compressed 3 GB member took 2.9 GB and 18 s to be refused: the names, shapes and dtypes
    come from the zip directory and the .npy headers, and nothing is read unless they are right."""
    path = tmp_path / "bomb.npz"
    params = adam_mod.init_params()
    headers = {name: (value.shape, value.dtype) for name, value in params.items()}
    npz_with_headers(path, {**headers, "W1": ((5, 2**40), "<f8")})
    with pytest.raises(ValueError, match=r"param 'W1': expected an array of shape \(5, 6\) float64, got \(5, 1099511627776\)"):
        adam_mod.load_params(path)
    npz_with_headers(path, {**headers, "extra": ((2**40,), "<f8")})
    with pytest.raises(ValueError, match="'extra' is not a param of this model"):
        adam_mod.load_params(path)
    trainer = trained(adam_mod, 1)
    before = copy(trainer.state_dict())
    state = {key: (value.shape, value.dtype) for key, value in trainer.state_dict().items()}
    for bad, message in [({"params.W1": ((5, 2**40), "<f8")}, "the checkpoint's 'params.W1' is (5, 1099511627776)"),
                         ({"optimizer": ((), "<U100000000")}, "the checkpoint's 'optimizer' is () <U100000000"),
                         ({"steps": ((2**40,), "<i8")}, "the checkpoint's 'steps' is (1099511627776,) int64")]:
        npz_with_headers(path, {**state, **bad})
        with pytest.raises(ValueError, match=re.escape(message)):
            trainer.load(path)
        assert_untouched(trainer, before, 1)
    trainer.save(path)
    npz_with_headers(path, {"junk": ((2**40,), "<f8")}, mode="a")  # an entry of no Trainer: refused, never read
    with pytest.raises(ValueError, match="the state has 'junk', which this model does not"):
        trainer.load(path)
    assert_untouched(trainer, before, 1)
    assert max((np.prod(shape) for shape in reads), default=0) <= 5 * 6  # only arrays of this model's sizes


def test_an_npy_file_is_not_a_params_file_or_a_checkpoint(adam_mod, tmp_path):
    path = tmp_path / "W1.npy"
    np.save(path, adam_mod.init_params()["W1"])
    for load, what in ((adam_mod.load_params, "params"), (trained(adam_mod, 1).load, "checkpoint")):
        with pytest.raises(ValueError, match=f"{what} {re.escape(repr(str(path)))}: not a .npz file \\(a zip of .npy "
                                             "arrays, as save_params and Trainer.save write\\)"):
            load(path)


# ---- save_params / load_params -----------------------------------------------------------------------------------

def test_params_round_trip(mod, tmp_path):
    params = trained(mod, 2).params
    path = tmp_path / "params.npz"
    mod.save_params(params, path)
    loaded = mod.load_params(path)
    assert sorted(loaded) == sorted(mod.PARAMS)
    for k in mod.PARAMS:
        assert loaded[k] is not params[k]
        assert loaded[k].dtype == params[k].dtype
        np.testing.assert_array_equal(loaded[k], params[k])
    with np.load(path, allow_pickle=False) as f:  # keyed by param name
        assert sorted(f.files) == sorted(mod.PARAMS)
    # loaded params train: they are what Trainer and predict take
    trainer = mod.Trainer(loaded)
    trainer.step(*data(1)[0])
    np.testing.assert_allclose(mod.predict(params, np.ones((2, 5))),
                               mod.predict(mod.load_params(path), np.ones((2, 5))), rtol=0, atol=0)


@pytest.mark.parametrize("edit, name, not_named", [
    (lambda p: p.pop("b1"), "b1", None),                                      # missing
    (lambda p: p.update(W1=np.zeros((5, 7))), "W1", None),                    # wrong shape
    (lambda p: p.update(W2=p["W2"].astype(np.float32)), "W2", None),          # wrong dtype
    (lambda p: p.update(b2=np.zeros((1, 3))), "b2", None),                    # wrong shape, same size
    (lambda p: (p.update(b1=np.zeros(2)), p.pop("W2")), "b1", "W2"),          # two mismatches: the first is named
    (lambda p: (p.pop("W2"), p.update(b2=np.zeros(1))), "W2", "b2"),
])
def test_load_params_names_the_first_mismatch(adam_mod, tmp_path, edit, name, not_named):
    params = adam_mod.init_params()
    edit(params)
    path = tmp_path / "bad.npz"
    np.savez(path, **params)
    with pytest.raises(ValueError) as err:
        adam_mod.load_params(path)
    message = str(err.value)
    assert re.search(rf"\b{name}\b", message), message
    if not_named:
        assert not re.search(rf"\b{not_named}\b", message), message


def test_params_file_and_checkpoint_are_not_mixed_up(adam_mod, tmp_path):
    """A params file is no checkpoint (no optimizer state) and a checkpoint is no params file (more than PARAMS)."""
    trainer = trained(adam_mod, 2)
    params_file, checkpoint = tmp_path / "params.npz", tmp_path / "ckpt.npz"
    adam_mod.save_params(trainer.params, params_file)
    trainer.save(checkpoint)
    before = copy(trainer.state_dict())
    with pytest.raises(ValueError):
        trainer.load(params_file)
    assert_untouched(trainer, before, 2)
    with pytest.raises(ValueError):
        adam_mod.load_params(checkpoint)
