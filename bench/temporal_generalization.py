"""Liu et al.'s finding on temporal rules: do the truncated rules (truncated BPTT, e-prop, RFLO,
ModProp) end at higher loss curvature on a rate RNN, and generalise worse and more variably,
than BPTT?

Per task and rule: a small learning-rate sweep (one seed, each rate trained without the
measurement), the rate with the best val score, then that rate on every seed with
``--curvature`` every epoch (top Hessian eigenvalue of the true loss in all weights and in
W_rec alone, the loss gap and, for classification, the top-1 gap). The gap and λ_max are
compared at matched training loss (``search.matched_loss``: each run interpolated at the
lowest loss on the fixed training subset that the most runs of the task came down through),
not only at the last epoch, so that a rule that learns slowly is not compared at an earlier
stage of fit.

Prints a table per task (rule: final λ_max in all weights and in W_rec, gap and λ_max at the
matched loss, mean ± sd and variance over seeds, Pearson and Spearman of gap against λ_max
over the rule's seeds, and over every run of the task); writes ``runs.jsonl`` (a re-run skips
finished runs), ``results.json`` (the raw results) and the figure (gap against λ_max at the
matched loss, coloured by rule; the gap along training).

    python bench/temporal_generalization.py --out runs/temporal [--tasks fashion_mnist
        delayed_match] [--rules backprop truncated_bptt e_prop rflo modprop] [--seeds 5]
        [--lrs 0.01 0.03 0.1] [--momentum 0] [--epochs 15] [--train-subset 5000] [--hidden 64]
        [--dataset-option delayed_match:delay_steps=20] [--model-option delayed_match:leak=0.8]
        [--rule-option truncated_bptt:truncation=5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from run_log import run_all

from search.matched_loss import Matched, covering_level, matched, pearson, spearman

RULES = ("backprop", "truncated_bptt", "e_prop", "rflo", "modprop")
TASKS = ("fashion_mnist", "delayed_match")
FALLBACK = {"fashion_mnist": "digits"}  # when its files are missing here
KEYS = ("loss_gap", "generalization_gap", "top_eigenvalue", "top_eigenvalue_recurrent")
KEPT = ("epoch", "train_loss", "val_loss", "val_score")  # of each epoch's record
GAP, LAMBDA = "loss_gap", "top_eigenvalue"
PLOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "temporal_generalization.png"


def _pairs(values: list[str], flag: str) -> dict[str, dict[str, Any]]:
    """``NAME:KEY=VALUE`` options, grouped by NAME (values as JSON where they parse)."""
    out: dict[str, dict[str, Any]] = {}
    for text in values:
        name, _, setting = text.partition(":")
        key, eq, value = setting.partition("=")
        if not (name and key and eq):
            raise SystemExit(f"{flag} {text!r}: expected NAME:KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[key] = parsed
    return out


def available_tasks(requested: list[str]) -> list[str]:
    """The requested datasets that exist here (FMNIST falls back to digits), in order."""
    from trainer.datasets.base import DATASETS, DataError

    out = []
    for name in requested:
        if name not in DATASETS.names():
            print(f"skipping task {name}: no such dataset here")
            continue
        try:
            DATASETS.get(name).check(None)
        except DataError as exc:
            fallback = FALLBACK.get(name)
            print(f"{name} is missing here ({exc}); "
                  + (f"using {fallback}" if fallback else "skipping it"))
            if fallback is None:
                continue
            name = fallback
        if name not in out:
            out.append(name)
    return out


def available_rules(requested: list[str]) -> list[str]:
    from catalogue.rule import list_rules

    known = set(list_rules())
    for rule in requested:
        if rule not in known:
            print(f"skipping rule {rule}: not registered")
    return [rule for rule in requested if rule in known]


def execute(run: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """One training run in a worker process (one torch thread), its history trimmed to the
    scalars this benchmark reads."""
    import torch

    import trainer

    from trainer.datasets.base import DATASETS

    torch.set_num_threads(1)
    base = dict(common["base"])
    if DATASETS.get(run["task"]).options:  # a generated set: its options size its splits
        base.pop("train_subset", None)
        base.pop("val_subset", None)
    config = {**base, "dataset": run["task"], "rule": run["rule"], "lr": run["lr"],
              "seed": run["seed"], "curvature": run["measure"],
              "curvature_every": 1 if run["measure"] else 0,
              "model_options": {**common["base"]["model_options"],
                                **common["model_options"].get(run["task"], {})},
              "dataset_options": common["dataset_options"].get(run["task"], {}),
              "metaparameters": common["rule_options"].get(run["rule"], {})}
    try:
        result = trainer.train(config)
    except Exception as exc:  # a rule that cannot train this model: recorded, not fatal
        return {**run, "status": "error", "reason": f"{type(exc).__name__}: {exc}",
                "best_val_score": None, "history": []}
    history = []
    for record in result.history:
        row = {k: record.get(k) for k in KEPT}
        c = record.get("curvature") or {}
        row.update({k: c.get(k) for k in (*KEYS, "train_loss_eval", "error")
                    if c.get(k) is not None})
        history.append(row)
    return {**run, "status": result.status, "reason": result.reason,
            "best_val_score": result.best_val_top1, "history": history,
            "wall_time": result.wall_time}


def chosen_rates(sweep: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Per (task, rule): the rate whose run reached the best val score; a run that diverged
    is never chosen (nor is a rate at its edge of stability)."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for r in sweep:
        score = r.get("best_val_score")
        if r["status"] != "completed" or score is None or not math.isfinite(score):
            continue
        key = (r["task"], r["rule"])
        if key not in best or score > best[key][0]:
            best[key] = (score, r["lr"])
    return {key: lr for key, (_, lr) in best.items()}


def _final(run: dict[str, Any], key: str) -> float | None:
    measured = [row[key] for row in run["history"] if row.get(key) is not None]
    return measured[-1] if measured else None


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3g} ± {sd:.2g}"


def _corr(x: list[float], y: list[float]) -> str:
    p, s = pearson(x, y), spearman(x, y)
    return "-" if p is None else f"{p:+.2f} / {s:+.2f}"


def analyse(task: str, runs: list[dict[str, Any]], rules: list[str],
            rates: dict[tuple[str, str], float]) -> tuple[str, dict[str, Any]]:
    """The task's table and its raw numbers: every completed run matched at the lowest
    training loss all of them reached."""
    done = [r for r in runs if r["status"] == "completed"]
    histories = {r["key"]: r["history"] for r in done}
    level = covering_level(histories)
    at = None if level is None else matched(histories, level, keys=KEYS)
    lines = [f"### {task}", ""]
    if at is None:
        return "\n".join(lines + ["no completed run measured anything", ""]), {}
    covered = len(at.pairs(GAP, LAMBDA)[0])
    lines += [f"matched at training loss {at.level:.4g} (eval mode, fixed training subset; the "
              f"lowest the most runs came down through: {covered} of {len(done)}); "
              f"gap = {GAP} (val − train loss); Pearson / Spearman of gap vs λ_max over "
              "the rule's seeds", "",
              "| rule | lr | val score | final λ_max | final λ_max W_rec | final gap | gap @ L "
              "| var gap @ L | λ_max @ L | r(gap, λ_max) | runs |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    raw: dict[str, Any] = {"level": at.level, "rules": {}}
    for rule in rules:
        mine = [r for r in done if r["rule"] == rule]
        gaps, lams = Matched(at.level, {r["key"]: at.values[r["key"]] for r in mine}).pairs(
            GAP, LAMBDA)
        finals = {k: [v for r in mine if (v := _final(r, k)) is not None]
                  for k in ("val_score", LAMBDA, "top_eigenvalue_recurrent", GAP)}
        var = statistics.variance(gaps) if len(gaps) > 1 else None
        lr = rates.get((task, rule))
        lines.append(
            f"| {rule} | {lr if lr is not None else '-'} | {_stat(finals['val_score'])} | "
            f"{_stat(finals[LAMBDA])} | {_stat(finals['top_eigenvalue_recurrent'])} | "
            f"{_stat(finals[GAP])} | {_stat(gaps)} | {'-' if var is None else f'{var:.2g}'} | {_stat(lams)} | "
            f"{_corr(gaps, lams)} | {len(mine)}/{len([r for r in runs if r['rule'] == rule])} |")
        raw["rules"][rule] = {"lr": lr, "gap_at_level": gaps, "lambda_at_level": lams,
                              "gap_variance": var, "final": finals,
                              "pearson": pearson(gaps, lams), "spearman": spearman(gaps, lams)}
    everyone = at.correlation(GAP, LAMBDA)
    everyone_rec = at.correlation(GAP, "top_eigenvalue_recurrent")
    raw["all_runs"] = {"gap_vs_lambda": everyone, "gap_vs_lambda_recurrent": everyone_rec,
                       "values": at.values}
    lines += ["", f"over every run of the task: r(gap, λ_max) = "
              f"{_corr(*at.pairs(GAP, LAMBDA))}, r(gap, λ_max W_rec) = "
              f"{_corr(*at.pairs(GAP, 'top_eigenvalue_recurrent'))} "
              f"({everyone['runs']} runs)", ""]
    return "\n".join(lines), raw


def plot(tasks: list[str], finals: list[dict[str, Any]], rules: list[str],
         raw: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {rule: plt.get_cmap("tab10")(i) for i, rule in enumerate(rules)}
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for (scatter, along), task in zip(axes, tasks):
        level = raw.get(task, {}).get("level")
        for rule in rules:
            entry = raw.get(task, {}).get("rules", {}).get(rule)
            if entry:
                scatter.scatter(entry["lambda_at_level"], entry["gap_at_level"], s=28,
                                color=colours[rule], label=rule)
            for run in (r for r in finals if r["task"] == task and r["rule"] == rule
                        and r["status"] == "completed"):  # a diverging gap hides the rest
                epochs = [row["epoch"] for row in run["history"] if row.get(GAP) is not None]
                gaps = [row[GAP] for row in run["history"] if row.get(GAP) is not None]
                along.plot(epochs, gaps, color=colours[rule], alpha=0.6, lw=1)
        scatter.set_xscale("log")
        scatter.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        scatter.set_xlabel("top Hessian eigenvalue λ_max (all weights)")
        scatter.set_ylabel("loss gap (val − train)")
        scatter.set_title(f"{task}: at matched training loss "
                          f"{'-' if level is None else f'{level:.3g}'}")
        scatter.legend(fontsize=8)
        along.set_xlabel("epoch")
        along.set_ylabel("loss gap (val − train)")
        along.set_title(f"{task}: the gap along training (completed runs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/temporal_generalization")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--rules", nargs="+", default=list(RULES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.03, 0.1],
                        help="the rates swept per rule (one seed)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--val-subset", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64, choices=(32, 64, 128, 256),
                        help="the RNN's units: rnn32, rnn64, rnn (128) or rnn256")
    parser.add_argument("--leak", type=float, default=0.0)
    parser.add_argument("--recurrent-gain", type=float, default=1.0,
                        help="W_rec's initial scale (the model's default, sqrt 2 as Liu et al., "
                             "loses seeds to divergence on 28 steps)")
    parser.add_argument("--momentum", type=float, default=0.0,
                        help="0: plain SGD, as Liu et al.; with momentum the ReLU RNN often "
                             "diverges")
    parser.add_argument("--dataset-option", action="append", default=[],
                        metavar="TASK:NAME=VALUE")
    parser.add_argument("--rule-option", action="append", default=[],
                        metavar="RULE:NAME=VALUE")
    parser.add_argument("--model-option", action="append", default=[],
                        metavar="TASK:NAME=VALUE",
                        help="the RNN's options on one task (e.g. delayed_match:leak=0.8), "
                             "over --hidden, --leak and --recurrent-gain")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    out = Path(args.out)
    tasks, rules = available_tasks(args.tasks), available_rules(args.rules)
    if not tasks or not rules:
        raise SystemExit("nothing to run: no task or no rule is available")
    common = {"base": {"arch": "rnn" if args.hidden == 128 else f"rnn{args.hidden}",
                       "model_options": {"leak": args.leak,
                                         "recurrent_gain": args.recurrent_gain},
                       "train_subset": args.train_subset, "val_subset": args.val_subset,
                       "epochs": args.epochs, "batch_size": args.batch,
                       "momentum": args.momentum},
              "dataset_options": _pairs(args.dataset_option, "--dataset-option"),
              "model_options": _pairs(args.model_option, "--model-option"),
              "rule_options": _pairs(args.rule_option, "--rule-option")}

    def describe(r: dict[str, Any]) -> str:
        return f"{r['status']}, best val score {r['best_val_score']}"

    swept = [{"key": f"sweep|{t}|{r}|{lr:g}", "task": t, "rule": r, "lr": lr, "seed": 0,
              "measure": False} for t in tasks for r in rules for lr in args.lrs]
    sweep = run_all(out, swept, execute, common, args.workers, describe)
    sweep = [r for r in sweep if r["key"] in {s["key"] for s in swept}]
    rates = chosen_rates(sweep)
    for t in tasks:
        for r in rules:
            if (t, r) not in rates:
                print(f"{r} on {t}: no rate of {args.lrs} completed; left out")
    wanted = [{"key": f"final|{t}|{r}|{rates[(t, r)]:g}|{seed}", "task": t, "rule": r,
               "lr": rates[(t, r)], "seed": seed, "measure": True}
              for t in tasks for r in rules if (t, r) in rates for seed in range(args.seeds)]
    final = run_all(out, wanted, execute, common, args.workers, describe)
    keys = {w["key"] for w in wanted}  # the log also holds runs at rates no longer chosen
    final = [r for r in final if r["key"] in keys]
    tables, raw = [], {}
    for task in tasks:
        table, raw[task] = analyse(task, [r for r in final if r["task"] == task], rules, rates)
        tables.append(table)
    header = (f"rate RNN ({args.hidden} units, leak {args.leak}, W_rec gain "
              f"{args.recurrent_gain}), {args.epochs} epochs, batch "
              f"{args.batch}, momentum {args.momentum}, train subset {args.train_subset}, "
              f"{args.seeds} seeds; per task: {common['model_options'] or 'no other'} model "
              f"options, {common['dataset_options'] or 'default'} dataset options; rate per "
              f"rule from {args.lrs} on seed 0 by val score\n")
    text = header + "\n" + "\n".join(tables)
    (out / "summary.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
         "rates": {f"{t}|{r}": lr for (t, r), lr in rates.items()},
         "sweep": sweep, "runs": final, "analysis": raw}, indent=1))
    plot(tasks, final, rules, raw, args.plot)
    print("\n" + text)
    print(f"wrote {out / 'summary.md'}, {out / 'results.json'} and {args.plot}")


if __name__ == "__main__":
    main()
