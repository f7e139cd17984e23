"""Runs that outlive the script: each finished run is one line of ``runs.jsonl``, and a re-run
skips the runs found there. Shared by the benchmarks that train many rules and seeds."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable


def add_run_options(parser: argparse.ArgumentParser, out: str, epochs: int) -> None:
    """The options every such benchmark has: where, what data, how long, how many at once."""
    parser.add_argument("--out", default=out)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)


def run_all(out: Path, planned: list[dict[str, Any]],
            execute: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
            common: dict[str, Any], workers: int,
            describe: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Every planned run (each with a unique ``key``) not yet in ``out/runs.jsonl``, in
    ``workers`` processes, logged as it finishes; returns every run's result."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if log.exists():
        done = {json.loads(line)["key"]: json.loads(line)
                for line in log.read_text().splitlines() if line.strip()}
    runs = [r for r in planned if r["key"] not in done]
    print(f"{len(runs)} runs to do, {len(done)} done", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(execute, run, common) for run in runs]
        for i, future in enumerate(as_completed(futures), 1):
            result = future.result()
            done[result["key"]] = result
            with log.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            print(f"[{i}/{len(runs)}] {result['key']}: {describe(result)}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    return list(done.values())


def mean_std(values: list[Any], digits: int = 1, scale: float = 1.0) -> str:
    """``mean ± std`` of the finite values (times ``scale``), ``-`` when none: a diverged or
    unmeasured run leaves a gap in a summary table, not a NaN."""
    values = [v * scale for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"
