"""The Ray Tune function trainable: one ``trainer.train`` run, reported every epoch."""

from __future__ import annotations

import json
from typing import Any

from catalogue.rule import rule_declaration
from catalogue.training import coerce_option
from search.searchers import METRIC


def split_sampled(rule: str, sampled: dict[str, Any]) -> tuple[dict[str, float],
                                                               dict[str, float]]:
    """(rule metaparameters, training options) of one sampled config."""
    names = rule_declaration(rule).defaults
    meta = {k: float(v) for k, v in sampled.items() if k in names}
    return meta, {k: coerce_option(k, float(v)) for k, v in sampled.items() if k not in names}


def trial_device(requested: str, gpu_ids: list) -> str:
    """The device a trial trains on: the GPU Ray assigned it, else the CPU.

    Ray narrows CUDA_VISIBLE_DEVICES to the trial's GPU, so "cuda" is that GPU (a fraction of a
    GPU is still one device). A trial that reserved no GPU stays on the CPU even on a GPU node,
    so trials never use a GPU they did not reserve. An explicit device is kept.
    """
    if requested != "auto":
        return requested
    return "cuda" if gpu_ids else "cpu"


def run_trial(sampled: dict[str, Any], base: dict[str, Any], fixed: dict[str, float],
              threads: int) -> None:
    """Train with ``base`` + fixed + sampled values; report each epoch, then the outcome.

    ``objective`` is the best validation top-1 so far (0.0 once diverged): what TPE and ASHA
    maximise. A diverged run reports once more with its reason instead of raising, so the
    trial ends normally and is recorded as FAIL with that reason.
    """
    import ray
    import torch
    from ray import tune

    import trainer

    torch.set_num_threads(max(1, threads))
    meta, knobs = split_sampled(base["rule"], {**fixed, **sampled})
    device = trial_device(base.get("device", "auto"), ray.get_gpu_ids())
    config = trainer.TrainConfig.from_dict({**base, **knobs, "device": device,
                                            "metaparameters": {**base.get("metaparameters", {}),
                                                               **meta}})
    # Where the trial ran, kept with it: the node, and the device and GPUs Ray gave it (how
    # fractional trials were packed can be read back from the study).
    where = {"node_ip": ray.util.get_node_ip_address(),
             "node_id": ray.get_runtime_context().get_node_id(), "device": device,
             "gpus": ",".join(str(g) for g in ray.get_gpu_ids())}
    best = 0.0

    def report(record: dict[str, Any]) -> None:
        nonlocal best
        best = max(best, record["val_top1"])
        nested = ("diagnostics", "feedback_plan")  # Tune's metrics are flat: these go as JSON
        metrics = {k: v for k, v in record.items() if k not in nested}
        for key in nested:
            if key in record:
                metrics[f"{key}_json"] = json.dumps(record[key])
        status = "completed" if record["epoch"] == config.epochs else "running"
        tune.report({**metrics, METRIC: best, "status": status, **where})

    result = trainer.train(config, callback=report)
    if result.status == "diverged":
        tune.report({METRIC: 0.0, "status": "diverged", "reason": result.reason,
                     "epoch": len(result.history) + 1, **where,
                     "wall_time": result.wall_time})
