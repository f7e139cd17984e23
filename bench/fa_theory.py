"""Feedback alignment's two-layer theory (Song, Xu & Lafferty, NeurIPS 2021), checked.

The model: f(x) = p^{-1/2} sum_r beta_r psi(w_r . x), squared loss L = 1/2 sum_i (f(x_i) -
y_i)^2 over n inputs on the unit sphere in d dimensions, targets from a random teacher of the
same form. Full-batch gradient descent; feedback alignment replaces beta_r by a fixed random
b_r in the first layer's update:

    w_r <- w_r - (eta / sqrt p) sum_i e_i b_r psi'(w_r . x_i) x_i     (BP: beta_r for b_r)
    beta <- beta - (eta / sqrt p) sum_i e_i psi(W x_i) - eta lambda beta

with e_i = f(x_i) - y_i. The paper's claims: (1) with p large the loss decays exponentially
(linearly in log scale); (2) the second layer aligns with b, cos(beta_T, b) > 0 and growing
with lambda, only when it is regularised: at lambda = 0 the alignment is of order p^{-1/2}.

Sweeps width p, activation psi (relu, tanh) and lambda; prints, per setting, the loss after
T steps over the initial one and the fitted log-loss slope, and cos(beta_T, b); writes
docs/img/fa_theory.png (log loss against step for FA and BP; cos(beta_T, b) against lambda
and against p).

    python bench/fa_theory.py [--widths 100 400 1600] [--lambdas 0 0.01 0.1 1]
        [--steps 2000] [--n 50] [--dim 10] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

PLOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "fa_theory.png"
ACTIVATIONS = {"relu": (torch.relu, lambda u: (u > 0).to(u.dtype)),
               "tanh": (torch.tanh, lambda u: 1 - torch.tanh(u) ** 2)}


@dataclass
class Run:
    losses: list[float]  # the loss at every step, the first before any update
    alignment: float  # cos(beta_T, b)


def sphere(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def problem(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n inputs on the sphere and a random teacher's targets (a width-8 ReLU network)."""
    gen = torch.Generator().manual_seed(seed)
    x = sphere(n, dim, gen)
    teacher_w = torch.randn(8, dim, generator=gen, dtype=torch.float64)
    teacher_b = torch.randn(8, generator=gen, dtype=torch.float64)
    return x, torch.relu(x @ teacher_w.T) @ teacher_b / math.sqrt(8)


def train(x: torch.Tensor, y: torch.Tensor, width: int, activation: str, lam: float,
          steps: int, lr: float, seed: int, rule: str = "fa") -> Run:
    """Full-batch gradient descent of the two-layer model by the paper's updates."""
    psi, dpsi = ACTIVATIONS[activation]
    gen = torch.Generator().manual_seed(1000 + seed)
    w = torch.randn(width, x.shape[1], generator=gen, dtype=torch.float64)
    beta = torch.randn(width, generator=gen, dtype=torch.float64)
    b = torch.randn(width, generator=gen, dtype=torch.float64)
    scale = 1 / math.sqrt(width)
    losses = []
    for _ in range(steps):
        u = x @ w.T  # (n, p)
        e = scale * psi(u) @ beta - y  # (n,)
        losses.append(0.5 * float(e @ e))
        back = b if rule == "fa" else beta
        grad_w = scale * ((e[:, None] * dpsi(u)) * back[None, :]).T @ x
        grad_beta = scale * psi(u).T @ e + lam * beta
        w = w - lr * grad_w
        beta = beta - lr * grad_beta
    e = scale * psi(x @ w.T) @ beta - y
    losses.append(0.5 * float(e @ e))
    alignment = float(beta @ b / (beta.norm() * b.norm()))
    return Run(losses, alignment)


def log_slope(losses: list[float]) -> float:
    """Least-squares slope of log loss against step over the run's second half."""
    half = losses[len(losses) // 2:]
    ys = [math.log(max(v, 1e-300)) for v in half]
    xs = list(range(len(ys)))
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (c - my) for a, c in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[100, 400, 1600])
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 0.01, 0.1, 1.0])
    parser.add_argument("--activations", nargs="+", default=["relu", "tanh"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[tuple, list[Run]] = {}
    print(f"n={args.n} inputs on the sphere in {args.dim} dims, {args.steps} full-batch steps "
          f"at lr {args.lr}, {args.seeds} seeds; loss ratio = last / first; slope = d log L / "
          "d step over the second half; cos = cos(beta_T, b)\n")
    print("| rule | psi | p | lambda | loss ratio | log-loss slope | cos(beta_T, b) | "
          "p^-1/2 |")
    print("|---|---|---|---|---|---|---|---|")
    for activation in args.activations:
        for width in args.widths:
            for lam in args.lambdas:
                for rule in ("fa", "bp") if lam == 0 else ("fa",):
                    every = [train(*problem(args.n, args.dim, s), width, activation, lam,
                                   args.steps, args.lr, s, rule) for s in range(args.seeds)]
                    runs = [r for r in every if math.isfinite(r.losses[-1])]
                    results[(rule, activation, width, lam)] = runs
                    lost = f" ({len(every) - len(runs)} diverged)" if len(runs) < len(every) \
                        else ""
                    if not runs:
                        print(f"| {rule.upper()} | {activation} | {width} | {lam:g} | "
                              f"diverged | | | {width ** -0.5:.3f} |", flush=True)
                        continue
                    ratio = statistics.fmean(r.losses[-1] / r.losses[0] for r in runs)
                    slope = statistics.fmean(log_slope(r.losses) for r in runs)
                    cos = [r.alignment for r in runs]
                    sd = statistics.stdev(cos) if len(cos) > 1 else 0.0
                    print(f"| {rule.upper()} | {activation} | {width} | {lam:g} | {ratio:.2e} | "
                          f"{slope:.2e} | {statistics.fmean(cos):+.3f} ± {sd:.3f}{lost} | "
                          f"{width ** -0.5:.3f} |", flush=True)
    plot(results, args)
    print(f"\nwrote {args.plot}")


def plot(results: dict[tuple, list[Run]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, by_lambda, by_width) = plt.subplots(1, 3, figsize=(15, 4.2))
    width, activation = max(args.widths), args.activations[0]
    for rule, style in (("fa", "-"), ("bp", "--")):
        for run in results[(rule, activation, width, 0.0)][:1]:
            curves.plot(run.losses, style, label=f"{rule.upper()}, λ = 0")
    for lam in [v for v in args.lambdas if v > 0]:
        for run in results[("fa", activation, width, lam)][:1]:
            curves.plot(run.losses, ":", label=f"FA, λ = {lam:g}")
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("training loss")
    curves.set_title(f"{activation}, p = {width}")
    curves.legend(fontsize=8)
    for act in args.activations:
        for p in args.widths:
            cos = [statistics.fmean([r.alignment for r in results[("fa", act, p, lam)]]
                                    or [math.nan]) for lam in args.lambdas]
            by_lambda.plot([max(v, 1e-3) for v in args.lambdas], cos, "o-",
                           label=f"{act}, p = {p}")
        for lam in args.lambdas:
            cos = [statistics.fmean([r.alignment for r in results[("fa", act, p, lam)]]
                                    or [math.nan]) for p in args.widths]
            by_width.plot(args.widths, cos, "o-", label=f"{act}, λ = {lam:g}")
    by_width.plot(args.widths, [p ** -0.5 for p in args.widths], "k--", label="p^-1/2")
    by_lambda.set_xscale("log")
    by_lambda.set_xlabel("λ (0 drawn at 1e-3)")
    by_lambda.set_ylabel("cos(β_T, b)")
    by_lambda.set_title("FA: alignment of the second layer with b")
    by_lambda.legend(fontsize=7)
    by_width.set_xscale("log")
    by_width.set_xlabel("width p")
    by_width.set_ylabel("cos(β_T, b)")
    by_width.set_title("FA: alignment against width")
    by_width.legend(fontsize=7)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
