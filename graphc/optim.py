"""The optimizer table, beside the op table. Adding an optimizer is adding a row here and its macro in
templates/optim.j2.

Every optimizer follows torch.optim exactly, defaults included: per optimizer its hyperparameters with their
defaults (lr included), the state it keeps per param (arrays shaped like the param: views into one flat array per
kind, as the params and their gradients are, Trainer's flat storage), and its update, the macro of the same name in
templates/optim.j2 (the body of ``Trainer._apply``: one in-place update of the flat params from the flat
gradients, the same arithmetic element by element as one update per param). A hyperparameter's kind says which values it takes; the generated module checks
run-time overrides against the same kinds (``_check_hyperparams`` in templates/module.py.j2).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import GraphError
from .ops import as_float

# kind -> (what a value must be, the check). The generated module checks run-time overrides the same way: the
# macro kind_<kind> in templates/optim.j2 (Trainer's _check_hyperparams in templates/module.py.j2).
KINDS = {
    "positive": ("a positive finite number", lambda v: is_number(v) and 0 < v < math.inf),
    "nonnegative": ("a finite number >= 0", lambda v: is_number(v) and 0 <= v < math.inf),
    "betas": ("a pair of numbers in [0, 1)", lambda v: isinstance(v, (tuple, list)) and len(v) == 2
              and all(is_number(b) and 0 <= b < 1 for b in v)),
    "flag": ("True or False", lambda v: isinstance(v, bool)),
}


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


@dataclass(frozen=True)
class Optimizer:
    name: str
    title: str  # what the generated code says it is
    hyperparams: dict  # name -> (kind, default), in torch's order
    state: tuple = ()  # per-param state arrays, zero at the start
    scratch: int = 0  # flat temporaries (of the flat params' size) that one update needs
    state_if: str | None = None  # the state exists only when this hyperparameter is nonzero at construction

    def defaults(self) -> dict:
        return {k: default for k, (_, default) in self.hyperparams.items()}

    def by_kind(self) -> dict:
        """kind -> (what a value must be, the hyperparameters of that kind), in the hyperparameters' order."""
        kinds = {}
        for key, (kind, _) in self.hyperparams.items():
            kinds.setdefault(kind, (KINDS[kind][0], []))[1].append(key)
        return kinds


OPTIMIZERS = {
    o.name: o for o in [
        Optimizer("sgd", "SGD (torch.optim.SGD)", {
            "lr": ("positive", 1e-3), "momentum": ("nonnegative", 0.0), "dampening": ("nonnegative", 0.0),
            "weight_decay": ("nonnegative", 0.0), "nesterov": ("flag", False),
        }, state=("momentum_buffer",), scratch=2, state_if="momentum"),
        Optimizer("adam", "Adam (torch.optim.Adam)", {
            "lr": ("positive", 1e-3), "betas": ("betas", (0.9, 0.999)), "eps": ("nonnegative", 1e-8),
            "weight_decay": ("nonnegative", 0.0),
        }, state=("exp_avg", "exp_avg_sq"), scratch=2),
        Optimizer("adamw", "AdamW (torch.optim.AdamW)", {
            "lr": ("positive", 1e-3), "betas": ("betas", (0.9, 0.999)), "eps": ("nonnegative", 1e-8),
            "weight_decay": ("nonnegative", 1e-2),
        }, state=("exp_avg", "exp_avg_sq"), scratch=1),
    ]
}


def hyperparams(optimizer: str, given: dict, where: str | None = None) -> dict:
    """Every hyperparameter of ``optimizer``, ``given`` checked and the rest at torch's defaults. Messages name
    a hyperparameter after ``where`` (default: "<optimizer> hyperparameter ")."""
    where = f"{optimizer} hyperparameter " if where is None else where
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise GraphError(f"unknown optimizer {optimizer!r} (graphc has {', '.join(map(repr, OPTIMIZERS))})")
    opt = OPTIMIZERS[optimizer]
    for key in given:
        if key not in opt.hyperparams:
            raise GraphError(f"{optimizer} has no hyperparameter {key!r} "
                             f"(it has {', '.join(opt.hyperparams)})")
    values = {**opt.defaults(), **given}
    for key, value in values.items():
        what, ok = KINDS[opt.hyperparams[key][0]]
        if not ok(as_float(value) if is_number(value) else value):
            raise GraphError(f"{where}{key} must be {what}, got {value!r}")
    if values.get("nesterov") and (values["momentum"] <= 0 or values["dampening"] != 0):
        raise GraphError(f"{where}nesterov (True) needs momentum > 0 and dampening = 0 "
                         f"(got momentum={values['momentum']!r}, dampening={values['dampening']!r})")
    return {k: tuple(float(b) for b in v) if k == "betas" else v if isinstance(v, bool) else float(v)
            for k, v in values.items()}
