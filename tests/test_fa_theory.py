"""Feedback alignment's two-layer theory (Song, Xu & Lafferty 2021), at a small size: FA's
training loss decays exponentially, and its second layer aligns with the random feedback b
only when it is regularised. A broken FA (b not used, or beta used in its place) fails."""

import importlib.util
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fa_theory.py"
spec = importlib.util.spec_from_file_location("fa_theory", BENCH)
fa_theory = importlib.util.module_from_spec(spec)
sys.modules.setdefault("fa_theory", fa_theory)  # its dataclass looks its module up
spec.loader.exec_module(fa_theory)


def _run(lam: float, rule: str = "fa", width: int = 400):
    x, y = fa_theory.problem(20, 5, seed=0)
    return fa_theory.train(x, y, width, "relu", lam, steps=800, lr=0.05, seed=0, rule=rule)


def test_fa_loss_decays_exponentially():
    run = _run(0.0)
    assert run.losses[-1] < 1e-3 * run.losses[0]
    quarter = len(run.losses) // 4  # a straight line in log scale: equal decay rates
    rates = [(math.log(run.losses[i + quarter]) - math.log(run.losses[i])) / quarter
             for i in (quarter, 2 * quarter)]
    assert all(r < 0 for r in rates) and 0.3 < rates[1] / rates[0] < 3


def test_the_second_layer_aligns_with_b_only_when_regularised():
    free, regularised = _run(0.0), _run(0.5)
    assert abs(free.alignment) < 0.3  # order p^-1/2 = 0.05, with the problem's spread
    assert regularised.alignment > 0.6 > free.alignment + 0.3
    assert abs(_run(0.5, rule="bp").alignment) < 0.2  # backprop's beta knows nothing of b
