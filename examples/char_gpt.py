"""Train the character-level GPT of examples/char_gpt.toml on examples/sonnets.txt, then sample text from it.

Run with `make gpt`, or: .venv/bin/python examples/char_gpt.py [--steps N] [--log-every N] [--seed S] [--temperature T]
[--length L] [--sample-seed S].

The text is fourteen-line sonnets of William Shakespeare (1609, public domain). Each step trains with Adam on a
batch of random 32-character windows, each position predicting the next character; the loss (cross-entropy, in
nats per character) is printed as it falls. Then the model writes --length characters after a 32-character
prompt taken from the text, one at a time, drawing each from the softmax of its logits over the temperature.
The generated module needs nothing but NumPy.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import graphc as gc

HERE = Path(__file__).resolve().parent
SPEC, TEXT = HERE / "char_gpt.toml", HERE / "sonnets.txt"


def load_model(spec_path=SPEC):
    spec = gc.load_spec(spec_path)
    return gc.compile(spec.graph, **spec.options()).load()


def encode(text: str, model):
    """The characters of the text (sorted) and the text as their ids; the model has room for VOCAB of them."""
    chars = sorted(set(text))
    vocab = model._SHAPES["tok"][0]
    if len(chars) > vocab:
        sys.exit(f"the text has {len(chars)} distinct characters; the model takes at most {vocab}")
    index = {c: i for i, c in enumerate(chars)}
    return chars, np.array([index[c] for c in text], dtype=np.int64)


def batch(data, rng, size, context):
    """``size`` random windows of ``context`` ids, and the id after each position."""
    starts = rng.integers(0, len(data) - context - 1, size)
    ids = np.stack([data[s:s + context] for s in starts])
    return ids, np.stack([data[s + 1:s + context + 1] for s in starts])


def sample(model, params, prompt, length, chars, temperature, rng):
    """``length`` characters after ``prompt`` (ids), each drawn from softmax(logits / temperature)."""
    window, out = list(prompt), []
    for _ in range(length):
        logits = model.predict(params, np.array([window]))[0, -1, :len(chars)] / temperature
        p = np.exp(logits - logits.max())
        nxt = int(rng.choice(len(chars), p=p / p.sum()))
        out.append(chars[nxt])
        window = window[1:] + [nxt]
    return "".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="Adam steps (default 600)")
    parser.add_argument("--log-every", type=int, default=50, help="print the loss every N steps (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="for init_params and the batches")
    parser.add_argument("--temperature", type=float, default=0.8, help="below 1: safer text; above: wilder")
    parser.add_argument("--length", type=int, default=300, help="characters to sample")
    parser.add_argument("--sample-seed", type=int, default=0, help="for the prompt and the sampling")
    args = parser.parse_args(argv)
    if args.temperature <= 0:
        parser.error("--temperature must be positive")

    model = load_model()
    text = TEXT.read_text()
    chars, data = encode(text, model)
    context = model._SHAPES["ids"][1]
    print(f"char_gpt: {len(text)} characters, {len(chars)} distinct; {model.OPTIMIZER} {model.HYPERPARAMS}, "
          f"batches of {model.BATCH_SIZE} windows of {context}")
    rng = np.random.default_rng(args.seed)
    trainer = model.Trainer(model.init_params(args.seed))
    running = None
    for step in range(1, args.steps + 1):
        loss = trainer.step(*batch(data, rng, model.BATCH_SIZE, context))
        running = loss if running is None else 0.9 * running + 0.1 * loss
        if step == 1 or step % args.log_every == 0:
            print(f"step {step:5d}  loss {loss:.3f}  (running {running:.3f})", flush=True)

    rng = np.random.default_rng(args.sample_seed)
    start = int(rng.integers(0, len(data) - context))
    prompt = data[start:start + context]
    print(f"\n--- prompt ---\n{''.join(chars[i] for i in prompt)}\n--- sampled, temperature {args.temperature} ---")
    print(sample(model, trainer.params, list(prompt), args.length, chars, args.temperature, rng))


if __name__ == "__main__":
    main()
