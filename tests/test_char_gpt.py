"""examples/char_gpt.toml: the character-level GPT takes the same first 5 Adam steps as the same model written in
PyTorch from the same init (float64), and the example driver trains and samples."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import graphc as gc

pytestmark = pytest.mark.unformatted

F = torch.nn.functional
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def torch_loss(p, ids, targets):
    """The spec's model in PyTorch: pre-norm blocks, causal attention over 4 heads, a GELU MLP."""
    B, T = ids.shape
    x = F.embedding(ids, p["tok"]) + p["pos"]
    for n in (1, 2):
        a = F.layer_norm(x, (64,), p[f"ln{n}a_w"], p[f"ln{n}a_b"], 1e-5)
        q, k, v = ((a @ p[f"{w}{n}"]).reshape(B, T, 4, 16).permute(0, 2, 1, 3) for w in "qkv")
        x = x + (F.scaled_dot_product_attention(q, k, v, is_causal=True) @ p[f"o{n}"]).sum(1)
        m = F.layer_norm(x, (64,), p[f"ln{n}b_w"], p[f"ln{n}b_b"], 1e-5)
        x = x + (F.gelu(m @ p[f"fc{n}"] + p[f"fc{n}_b"]) @ p[f"proj{n}"] + p[f"proj{n}_b"])
    logits = F.layer_norm(x, (64,), p["lnf_w"], p["lnf_b"], 1e-5) @ p["head"]
    return F.cross_entropy(logits.permute(0, 2, 1), targets)


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
