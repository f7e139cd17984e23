"""From Ray trials to Optuna trials: the record of a finished trial, the recorder that writes it,
and the after-the-fact reconciliation; the live Tune callback is ``search.tune_recorder``.
Nothing here imports Ray, so a command checks its input before Ray is loaded.

The study is the ledger of a sweep. A trial is written when it ends; a write that fails (the
database is away) is queued and retried from the Tune loop without blocking it, and whatever is
still queued when the experiment ends is written with back-off. Trials are keyed by
``experiment/trial_id`` (Ray's ids are unique only within one experiment), so writing twice is
harmless and a trial is never recorded twice.

Progress counts what the study holds, never what was merely queued: a line says how many
trials are recorded and how many finished ones wait, unwritten, and the running best is taken
from recorded trials only. A line names its trial by the number Optuna gave it (``trial 16``,
from 0: the number ``best`` and ``trials`` show), apart from the count (``[17/32]``); a trial
written late, after an outage, gets a line of its own naming its number. A recorder given a
``fence`` (the driver's lease) checks it right before each write: a driver another one took
over records nothing more.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import optuna

from catalogue.errors import EnvironmentProblem, LeaseLost, StorageUnavailable
from catalogue.mechanism import PLAN_NOT_APPLICABLE as NOT_APPLICABLE
from search import storage as st
from search.records import from_flat
from search.scores import BY_ARCH, LEGACY_BY_ARCH, has_score
from search.trial_io import CONFIG_KEY
from spaces import SearchSpace

def print_progress(line: str) -> None:
    """Default progress sink: one line per finished trial on stderr (picklable for Ray)."""
    print(line, file=sys.stderr, flush=True)


def last_attempt(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports of a trial's last attempt: a retried trial starts again at epoch 1 (a trial
    over several architectures counts its epochs across them, ``epoch_overall``)."""
    start, before = 0, None
    for i, result in enumerate(results):
        epoch = result.get("epoch_overall", result.get("epoch"))
        if epoch is None:
            continue
        if before is not None and epoch <= before:
            start = i
        before = epoch
    return results[start:]


def record_from_results(trial_id: str, described: tuple[dict[str, float], dict[str, Any]],
                        results: list[dict[str, Any]], error: str | None) -> st.TrialRecord:
    params, extra = described
    results = last_attempt(results)
    discarded = next((r["checkpoint_discarded"] for r in results
                      if r.get("checkpoint_discarded")), None)
    if discarded:  # the attempt restarted: its checkpoint could not be read
        extra = {**extra, "checkpoint_discarded": discarded}
    restored_from = None
    for i in range(len(results) - 1, -1, -1):  # the last restore: what came before it is in it
        if results[i].get("restored_json"):
            restored_from = int(results[i]["restored_from_epoch"])
            results = json.loads(results[i]["restored_json"]) + results[i:]
            extra = {**extra, "restored_from_epoch": restored_from}
            break
    history = []
    for r in results:
        if r.get("status") in ("running", "completed") and has_score(r):
            history.append(from_flat(r))
    last = results[-1] if results else {}
    ran = next((r[CONFIG_KEY] for r in reversed(results) if r.get(CONFIG_KEY)), None)
    if ran:  # the training configuration the trial ran: the study knows what it was
        extra = {**extra, "train_config": json.loads(ran)}
    value = None
    if last.get("across_json"):  # several architectures: the objective over them
        across = json.loads(last["across_json"])
        value = across["value"]
        extra = {**extra, "objective": across["objective"], "archs": across["archs"],
                 **{k: across[k] for k in (BY_ARCH, LEGACY_BY_ARCH) if k in across},
                 "diverged_archs": across["diverged_archs"]}
    if error is not None:
        status, reason = "error", error
    elif last.get("status") in ("diverged", "invalid"):  # a result, never an accident
        status, reason = last["status"], last.get("reason")
    elif last.get("status") == "completed":
        status, reason = "completed", None
    else:
        status, reason = "stopped", "stopped early by the scheduler"
    placement = {k: str(last[k]) for k in ("device", "gpus") if k in last}
    return st.TrialRecord(ray_trial_id=trial_id, params=params, history=history, status=status,
                          reason=reason, wall_time=last.get("wall_time"),
                          node_ip=last.get("node_ip"), node_id=last.get("node_id"),
                          extra={**placement, **extra}, value=value)


def error_text(trial: Any) -> str:
    """The last line of the worker's traceback, which Ray writes beside the trial."""
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:500]
    return "the trial's worker failed (see the Ray experiment folder)"


Fence = Callable[[], None]  # raises LeaseLost once this driver no longer holds its lease


class Recorder:
    """Writes records into one study; shared by the live callback and the reconciliation.

    ``tags`` are user attributes every trial gets (a sweep's id, so that the study can count
    what a sweep has done). ``fence`` (``Lease.check``, or ``lease.fence_of(leases)``) is
    called before each write and raises ``LeaseLost`` once another driver took the run over.
    The storage URL and the fence are dropped when pickled: Ray writes its callbacks into the
    experiment folder, and a URL may carry a password.
    """

    def __init__(self, storage_url: str, study_name: str, space: SearchSpace,
                 experiment: str, tags: dict[str, Any] | None = None,
                 fence: Fence | None = None) -> None:
        self.storage_url, self.study_name, self.space = storage_url, study_name, space
        self.experiment, self.tags = experiment, dict(tags or {})
        self.fence = fence
        self._study: optuna.Study | None = None
        self._known: dict[str, int] = {}  # Ray trial id -> Optuna number, of recorded ones

    def describe(self, config: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        """(Optuna params, extra user attributes) of a Ray trial, from its config."""
        return {k: config[k] if isinstance(config[k], str) else float(config[k])
                for k in self.space.params if k in config}, {}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = st.load_study(st.open_storage(self.storage_url), self.study_name)
        return self._study

    def record(self, records: list[st.TrialRecord], *, attempts: int | None = None) -> int:
        """Write the records the study lacks; returns how many were added, and each record
        the study holds carries its Optuna trial number. Raises ``LeaseLost`` (nothing more
        written) when the fence says the run was taken over."""
        for record in records:
            if "/" not in record.ray_trial_id:
                record.ray_trial_id = f"{self.experiment}/{record.ray_trial_id}"
            record.extra = {**self.tags, **(record.extra or {})}
        try:  # the fence is checked immediately before each write, each retry included
            return st.record_trials(self.study, records, self.space.to_optuna(),
                                    url=self.storage_url, known=self._known,
                                    attempts=attempts, fence=self.fence)
        except LeaseLost:
            raise
        except Exception:
            self._known.clear()  # a write may have landed unacknowledged: re-read next time
            raise

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "storage_url": None, "fence": None, "_study": None,
                "_known": {}}


FLAGGED = ("unstable", "under-relaxed", "unknown")  # B's plan verdicts a progress line names


def plan_summary_line(plans: list[dict[str, Any]]) -> str | None:
    """One line over the trials of a run whose B was unstable or under-relaxed: how many,
    whether the best trial is among them (its metaparameters are what the sweep reports),
    and the advice of the worst (the trainer's plan names the fix); when the plan applied to
    none of them, why; None when all were fine."""
    if plans and all(p.get("verdict") == NOT_APPLICABLE for p in plans):
        return plans[0].get("advice")
    bad = [p for p in plans if p.get("verdict") in ("unstable", "under-relaxed")]
    if not bad:
        return None
    worst = min(bad, key=lambda p: (p["verdict"] != "unstable", p.get("relaxations_min", 0)))
    counts = ", ".join(f"{sum(p['verdict'] == v for p in bad)} {v}"
                       for v in ("unstable", "under-relaxed")
                       if any(p["verdict"] == v for p in bad))
    scored = [p for p in plans if p.get("value") is not None]
    best = max(scored, key=lambda p: p["value"]) if scored else None
    about_best = ""
    if best is not None:
        flagged = best.get("verdict") in ("unstable", "under-relaxed")
        trial = f"trial {best['trial']}" if best.get("trial") is not None else "trial"
        about_best = (f"; the best ({trial}, {best['value']:.4f}) is {best['verdict']}"
                      if flagged else f"; the best ({trial}, {best['value']:.4f}) is not "
                      f"among them")
    return (f"B's plan: {counts} of {len(plans)} trials{about_best}; worst: "
            f"{worst.get('advice')}")


def reconcile(result_grid: Any, recorder: Recorder, resume_hint: str = "") -> int:
    """Record every finished trial of a ResultGrid that the study does not hold yet.

    Raises StorageUnavailable (one line, password masked) when the study stays unwritable.
    """
    records = []
    for result in result_grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None:
            continue
        df = result.metrics_dataframe
        rows = [] if df is None else [
            {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in df.to_dict("records")]
        rows = rows or [result.metrics]
        error = None if result.error is None else str(result.error).strip().splitlines()[-1]
        record = record_from_results(trial_id, recorder.describe(result.config), rows, error)
        if record.status == "stopped":
            # Neither finished nor failed: the run was interrupted (a scheduler's stop goes
            # through on_trial_complete). Left out, so that `resume` runs it again.
            continue
        records.append(record)
    try:
        return recorder.record(records)
    except LeaseLost:
        raise  # another driver runs the rest: not an outage, and nothing to retry
    except Exception as exc:
        kind = st.classify(exc, recorder.storage_url)
        what = (f"the study {recorder.study_name!r} could not be written "
                f"({st.cause(exc, recorder.storage_url)})")
        if kind == "transient":  # away, and may come back: resume then
            raise StorageUnavailable(f"{what}{resume_hint}") from None
        if kind == "environment":  # the machine refuses (read-only, full): resume once fixed
            hint = resume_hint.replace("once it is back", "once that is fixed")
            raise EnvironmentProblem(f"{what}{hint}") from None
        raise  # refused for a reason no retry changes: a bug, not an outage

