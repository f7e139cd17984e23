"""Training-step time of every rule divided by plain-autograd backprop, measured side by side.

Each round times one step of every rule in turn (round-robin, same batch, same threads), so
drift in machine speed hits all rules alike; the ratio is the median over rounds of the
ratio within each round, printed with its quartiles over rounds. A step is
exactly what training runs (``trainer.loop.train_step``): forward, task + alignment loss,
backward, SGD. ResNet targets come from the extra convolutions each regularizer needs; on the
small models (MLP, LeNet) every rule's target is 1.3, since there the extra arithmetic is small
and what is left is per-layer overhead. The noise rules also run with uniform input noise (same
variance) and with 32 noise examples per step instead of the batch (``--noise-batch 32``); these
rows have no target of their own: they say what the option costs.

The rules that relax for T inner iterations (every rule with an ``inference_steps`` option)
run at T = 10 and T = 100. Their step has no target; the target is per inner iteration: the
extra time of T = 100 over T = 10, divided by 90, over one plain autograd backward through the
same model (forward + loss + backward, less forward + loss): at most 1.2. A model a rule does
not take is printed as "refused".

The rate RNN (``rnn``: 128 units, a 28x28 image read as 28 steps of 28 inputs) is where the
temporal rules run; there backprop is BPTT. Truncated BPTT and e-prop (symmetric or random B)
run BPTT's own graph with parts cut (the state detached every k steps; z_{t-1} detached in the
recurrent input), so they can only be cheaper: target 1.0. RFLO and ModProp replace
autograd's backward by their own update over the kept states. ModProp's is BPTT's backward
recursion with W_ab (block means of W) in place of W and no f' on that path: the same
per-step products, so 2.0 leaves room for running them as Python-level steps instead of
autograd's engine. RFLO sums its traces' contributions backward in time (the learning
signal filtered by the leak, then one outer product per step and weight: BPTT's order), so
2.0 as well; its online form, (N, H, H) traces updated at every step, measured 6.4 here and
is kept only as the tests' oracle. The feedforward rules
on the RNN keep the small models' 1.3 (per-call overhead, now 28 calls a layer).

Direct feedback alignment's input gradients are one product e @ D per layer in place of the
transposed op through B, so plain DFA has FA's targets; its variants (unit D, sparse D,
modules, hybrid, DFA within modules through a dilated kernel) have none of their own: the
rows say what each costs. ``--rows`` measures only the rows named by a prefix, beside
backprop.

    python bench/step_overhead.py [--rounds 15] [--threads 2] [--device auto] [--setups rnn]
        [--rows DFA,direct]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import trainer
from catalogue.errors import UsageError
from torch_setup import add_options
from torch_setup import setup as setup_torch
from trainer.loop import TrainConfig, train_step
from trainer.optim import make_optimizer

# row: (rule, noise distribution, noise examples per step: 0 is the batch, rule options)
ROWS: dict[str, tuple] = {"backprop": ("backprop", "normal", 0),
        "feedback_alignment": ("feedback_alignment", "normal", 0),
        "kolen_pollack": ("kolen_pollack", "normal", 0),
        "symmetric_alignment": ("symmetric_alignment", "normal", 0),
        "frsf": ("frsf", "normal", 0),
        "weight_mirror": ("weight_mirror", "normal", 0),
        "weight_mirror, uniform noise": ("weight_mirror", "uniform", 0),
        "weight_mirror, noise batch 32": ("weight_mirror", "normal", 32),
        "activation_alignment": ("activation_alignment", "normal", 0),
        "information_alignment": ("information_alignment", "normal", 0),
        "information_alignment, uniform noise": ("information_alignment", "uniform", 0),
        "information_alignment, noise batch 32": ("information_alignment", "normal", 32),
        "phaseless_alignment": ("phaseless_alignment", "normal", 0),
        "truncated_bptt": ("truncated_bptt", "normal", 0),
        "e_prop, symmetric": ("e_prop", "normal", 0, {"feedback": "symmetric"}),
        "e_prop, random B": ("e_prop", "normal", 0, {"feedback": "random"}),
        "rflo": ("rflo", "normal", 0),
        "modprop": ("modprop", "normal", 0),
        "direct_feedback_alignment": ("direct_feedback_alignment", "normal", 0),
        "DFA, unit D (uncalibrated)": ("direct_feedback_alignment", "normal", 0,
                                       {"feedback_init": "unit"}),
        "DFA, sparsity 0.9": ("direct_feedback_alignment", "normal", 0,
                              {"feedback_sparsity": 0.9}),
        "DFA, modules=2": ("direct_feedback_alignment", "normal", 0, {"modules": 2}),
        "DFA, hybrid=2": ("direct_feedback_alignment", "normal", 0, {"hybrid": 2}),
        "DFA, modules=2, within=direct, dilation 2, groups 2": (
            "direct_feedback_alignment", "normal", 0,
            {"modules": 2, "within": "direct", "feedback_dilation": 2, "feedback_groups": 2})}
RELAXATION_STEPS = (10, 100)
RELAXING = [rule for rule in trainer.list_rules()
            if trainer.rule_declaration(rule).option("inference_steps") is not None]
for _rule in RELAXING:
    for _steps in RELAXATION_STEPS:
        ROWS[f"{_rule}, T={_steps}"] = (_rule, "normal", 0, {"inference_steps": _steps})
ITERATION_TARGET = 1.2
# The plain autograd passes one inner iteration is compared with (no optimizer step).
FORWARD, FORWARD_BACKWARD = "forward + loss", "forward + loss + backward"
# DFA's backward replaces each layer's input gradient by one product e @ D: no dearer than FA's.
CONV_TARGETS = {"backprop": 1.0, "feedback_alignment": 1.05, "direct_feedback_alignment": 1.05,
                "kolen_pollack": 1.05,
                "symmetric_alignment": 1.05, "frsf": 1.05, "weight_mirror": 1.7,
                "activation_alignment": 1.7, "information_alignment": 2.4}
SMALL_TARGET = 1.3
# The temporal rules' targets hold whatever the model (only the rate RNN takes them).
TEMPORAL_TARGETS = {"truncated_bptt": 1.0, "e_prop, symmetric": 1.0, "e_prop, random B": 1.0,
                    "rflo": 2.0, "modprop": 2.0}

SETUPS = {  # name: (arch, in_channels, image_size, steps per timed sample, small model)
    "resnet20 32x32 b128": ("resnet20", 3, 32, 1, False),
    "lenet 28x28 b128": ("lenet", 1, 28, 5, True),
    "mlp 8x8 b128": ("mlp", 1, 8, 20, True),
    "rnn 28x28 b128": ("rnn", 1, 28, 5, True),  # 128 units, 28 steps of 28 inputs (rows)
}


def pick_setup(name: str) -> str | None:
    """A setup by its full name or by its model alone (``rnn``), or None."""
    if name in SETUPS:
        return name
    named = [setup for setup, spec in SETUPS.items() if spec[0] == name]
    return named[0] if len(named) == 1 else None


def target(row: str, setup: str) -> float | None:
    """None: no target (the uniform-noise and noise-batch rows)."""
    if row in TEMPORAL_TARGETS:
        return TEMPORAL_TARGETS[row]
    if row not in CONV_TARGETS:
        return None
    if row == "backprop":
        return 1.0
    return SMALL_TARGET if SETUPS[setup][4] else CONV_TARGETS[row]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make(rule: str, noise: str, noise_batch: int, options: dict, arch: str, channels: int,
          size: int, device: torch.device):
    """The converted model and its optimizer, or None for a model the rule refuses."""
    torch.manual_seed(0)
    model = trainer.create_model(arch, num_classes=10, in_channels=channels, image_size=size)
    try:
        trainer.convert(model, rule, noise=noise, noise_batch=noise_batch, **options)
    except UsageError:
        return None
    model.to(device).train()
    opt = make_optimizer(model, TrainConfig(lr=0.01, momentum=0.9))
    return model, opt


def _plain_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """A step of forward + loss only, and one of forward + loss + backward (no SGD)."""
    def forward():
        return F.cross_entropy(model(x), y)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        forward().backward()
    return {FORWARD: forward, FORWARD_BACKWARD: forward_backward}


def chosen_rows(prefixes: str) -> list[str]:
    """backprop (every ratio's denominator) and the rows named by a prefix (all: empty)."""
    wanted = [p.strip() for p in prefixes.split(",") if p.strip()]
    return [row for row in ROWS if row == "backprop" or not wanted
            or any(row.startswith(p) for p in wanted)]


def measure(setup: str, rounds: int, batch: int, device: torch.device,
            rows: list[str] | None = None) -> dict[str, list[float]]:
    """Each row's step time (s) in every round, rounds in order."""
    arch, channels, size, inner, _ = SETUPS[setup]
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    rows = rows or list(ROWS)
    made = {row: _make(*ROWS[row][:3], ROWS[row][3] if len(ROWS[row]) > 3 else {}, arch,
                       channels, size, device) for row in rows}
    steps = {row: (lambda m=made[row]: train_step(m[0], m[1], x, y))
             for row in rows if made[row] is not None}
    steps.update(_plain_passes(made["backprop"][0], x, y))
    samples: dict[str, list[float]] = {row: [] for row in steps}
    for step in steps.values():  # warm-up
        for _ in range(2):
            step()
    for _ in range(rounds):
        for row, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                step()
            _sync(device)
            samples[row].append((time.perf_counter() - start) / inner)
    return samples


def iteration_ratio(samples: dict[str, list[float]], rule: str) -> tuple[float, float]:
    """(ms of one inner iteration, its ratio to one autograd backward), medians over rounds
    of the within-round values: (step(T=100) - step(T=10)) / 90 over (forward+backward -
    forward)."""
    low, high = (f"{rule}, T={t}" for t in RELAXATION_STEPS)
    span = RELAXATION_STEPS[1] - RELAXATION_STEPS[0]
    per_iteration = [(b - a) / span for a, b in zip(samples[low], samples[high])]
    backward = [fb - f for f, fb in zip(samples[FORWARD], samples[FORWARD_BACKWARD])]
    ratios = [i / b for i, b in zip(per_iteration, backward)]
    return statistics.median(per_iteration) * 1e3, statistics.median(ratios)


def summarize(samples: dict[str, list[float]], row: str) -> tuple[float, float, float, float]:
    """(median ms, median ratio, lower and upper quartile of the ratio). The ratio is taken
    within each round (the row's step over backprop's in the same round), so that drift in
    machine speed between rounds cancels; the quartiles say how far one run can be trusted."""
    ratios = [a / b for a, b in zip(samples[row], samples["backprop"])]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(samples[row]) * 1e3, median, q1, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, rounds=15)
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"comma-separated, of: {', '.join(SETUPS)}; or the model alone "
                             "(rnn)")
    parser.add_argument("--rows", default="",
                        help="comma-separated prefixes of the rows to measure beside backprop "
                             "(e.g. 'DFA,direct'; default: every row)")
    args = parser.parse_args()
    named = [s.strip() for s in args.setups.split(",")]
    unknown = [s for s in named if pick_setup(s) is None]
    if unknown:
        parser.error(f"unknown setup(s) {unknown}; valid: {', '.join(SETUPS)} (or the model "
                     f"alone: {', '.join(spec[0] for spec in SETUPS.values())})")
    chosen = [setup for s in named if (setup := pick_setup(s)) is not None]
    device = setup_torch(args, "rounds")
    rows = chosen_rows(args.rows)
    results = {setup: measure(setup, args.rounds, args.batch, device, rows) for setup in chosen}
    print("| rule | " + " | ".join(f"{s}: ms, ratio [quartiles] (target)" for s in results)
          + " |")
    print("|" + "---|" * (len(results) + 1))
    missed = []
    for row in rows:
        cells = []
        for setup in results:
            if row not in results[setup]:
                cells.append("refused")
                continue
            ms, ratio, q1, q3 = summarize(results[setup], row)
            goal = target(row, setup)
            verdict = "" if goal is None else f" (≤ {goal:.2f}{'' if ratio <= goal else ' MISSED'})"
            if goal is not None and ratio > goal:
                missed.append(f"{row} on {setup}: {ratio:.2f} > {goal:.2f}")
            cells.append(f"{ms:.1f}, {ratio:.2f} [{q1:.2f}–{q3:.2f}]{verdict}")
        print(f"| {row} | " + " | ".join(cells) + " |")
    relaxing = [rule for rule in RELAXING if f"{rule}, T={RELAXATION_STEPS[0]}" in rows]
    if relaxing:
        print(f"\none inner iteration over one autograd backward (target ≤ "
              f"{ITERATION_TARGET:.1f})\n")
        print("| rule | " + " | ".join(f"{s}: ms, ratio" for s in results) + " |")
        print("|" + "---|" * (len(results) + 1))
        for rule in relaxing:
            cells = []
            for setup in results:
                if f"{rule}, T={RELAXATION_STEPS[0]}" not in results[setup]:
                    cells.append("refused")
                    continue
                ms, ratio = iteration_ratio(results[setup], rule)
                if ratio > ITERATION_TARGET:
                    missed.append(f"{rule}'s inner iteration on {setup}: {ratio:.2f} > "
                                  f"{ITERATION_TARGET:.1f}")
                cells.append(f"{ms:.2f}, {ratio:.2f}"
                             f"{'' if ratio <= ITERATION_TARGET else ' MISSED'}")
            print(f"| {rule} | " + " | ".join(cells) + " |")
    print("\ntargets missed: " + ("; ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()
