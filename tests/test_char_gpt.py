"""examples/char_gpt.toml: the character-level GPT takes the same first 5 Adam steps as the same model written in
PyTorch (bench/gpt.py's torch_loss) from the same init (float64), and the example driver trains and samples."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import graphc as gc
from memcheck import peak_bytes

pytestmark = pytest.mark.unformatted

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES.parent / "bench"))
from gpt import torch_loss  # noqa: E402  (the model in PyTorch, the reference bench/gpt.py times too)


@pytest.fixture(scope="module")
def model():
    spec = gc.load_spec(EXAMPLES / "char_gpt.toml")
    return gc.compile(spec.graph, **spec.options()).load()


def test_first_five_adam_steps_equal_torchs(model):
    sys.path.insert(0, str(EXAMPLES))
    import char_gpt

    chars, data = char_gpt.encode((EXAMPLES / "sonnets.txt").read_text(), model)
    rng = np.random.default_rng(0)
    params = model.init_params(0)
    ps = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam(ps.values(), lr=model.HYPERPARAMS["lr"])  # the spec's: adam, lr 3e-3, torch's defaults
    trainer = model.Trainer(params)
    for step in range(5):
        ids, targets = char_gpt.batch(data, rng, 4, 32)
        opt.zero_grad()
        loss = torch_loss(ps, torch.tensor(ids), torch.tensor(targets))
        loss.backward()
        opt.step()
        assert trainer.step(ids, targets) == pytest.approx(loss.item(), rel=1e-12), step
    for k, p in ps.items():
        np.testing.assert_allclose(trainer.params[k], p.detach().numpy(), rtol=1e-9, atol=1e-11, err_msg=k)


def test_driver_trains_and_samples(capsys):
    sys.path.insert(0, str(EXAMPLES))
    import char_gpt

    char_gpt.main(["--steps", "30", "--log-every", "10", "--length", "40", "--temperature", "0.5"])
    out = capsys.readouterr().out
    losses = [float(line.split()[3]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 4 and losses[-1] < losses[0] - 1.0  # from about ln(80) down
    sample = out.split("--- sampled, temperature 0.5 ---\n")[1]
    assert len(sample.rstrip("\n")) >= 40


def test_a_step_allocates_no_array(model):
    """Issue 16: on a seen batch size, Trainer.step allocates no array (NumPy's iteration buffers, bounded by
    bufsize, aside): the embedding's gradient is a product with a one-hot array kept in the workspace, not
    np.bincount's new (80, 64) array of 40,960 bytes."""
    sys.path.insert(0, str(EXAMPLES))
    import char_gpt

    _, data = char_gpt.encode((EXAMPLES / "sonnets.txt").read_text(), model)
    ids, targets = char_gpt.batch(data, np.random.default_rng(0), model.BATCH_SIZE, 32)
    trainer = model.Trainer(model.init_params(0))
    trainer.step(ids, targets)  # the first step on a size allocates its workspace
    assert peak_bytes(lambda: trainer.step(ids, targets), bufsize=16) < 10_000
