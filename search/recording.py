"""From Ray trials to Optuna trials: the live Tune callback and the after-the-fact reconciliation.

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
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from ray import tune

from catalogue.errors import EnvironmentProblem, LeaseLost, StorageUnavailable
from search import storage as st
from search.records import from_flat
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
        if r.get("status") in ("running", "completed") and "val_top1" in r:
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
                 "val_top1_by_arch": across["val_top1_by_arch"],
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


class OptunaRecorder(tune.Callback):
    """Records each Ray trial when it ends and prints one progress line per trial.

    Every count is of trials the study holds: a trial whose write failed is queued, said to
    be, retried from the Tune loop, and counted (its value in the running best) once written.
    """

    def __init__(self, recorder: Recorder, total: int, already: int,
                 progress: Callable[[str], None] = print_progress,
                 retry_every: float = 2.0, best: float | None = None,
                 failed: int = 0) -> None:
        """``already`` trials of ``total`` were recorded before this run (a resumed sweep),
        with ``best`` and ``failed`` among them, so its counts go on from there."""
        self.recorder, self.total, self.already, self.progress = recorder, total, already, progress
        self.retry_every = retry_every
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.attempts: dict[str, int] = {}
        self.pending: list[st.TrialRecord] = []  # finished, not yet written
        self.recorded = 0  # this run's trials in the study
        self.failed = failed  # failed among the sweep's recorded trials
        self.best: float | None = best  # the best value among them
        self.started = time.monotonic()
        self.plans: list[dict[str, Any]] = []  # each finished trial's last feedback plan
        self.lost: str | None = None  # set once another driver took the run over
        self._next_try = 0.0
        self._outage_since: float | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.setdefault(trial.trial_id, []).append(dict(result))
        if result.get("arch_done"):  # a trial over several architectures finished one
            outcome = (f"diverged: {result['arch_reason']}" if result.get("arch_reason")
                       else f"val top-1 {result['arch_top1']:.4f}")
            self.progress(f"  trial {trial.trial_id}: {result['arch']} {outcome} "
                          f"(architecture {int(result['arch_index']) + 1} of "
                          f"{int(result['arch_count'])})")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A crashed worker is retried (FailureConfig): its next attempt starts afresh."""
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 1) + 1
        self.results.pop(trial.trial_id, None)
        self.progress(f"trial {trial.trial_id} crashed ({error_text(trial)}); retrying, "
                      f"attempt {self.attempts[trial.trial_id]}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trials, trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trials, trial, error_text(trial))

    def on_step_end(self, iteration, trials, **info):
        if self.pending and time.monotonic() >= self._next_try:
            self._flush(attempts=1)

    def on_experiment_end(self, trials, **info):
        if self.pending:  # back-off capped at 5 s: about two minutes of patience per trial
            self._flush(attempts=30)
        if self.pending:
            self.progress(f"{len(self.pending)} finished trial(s) could not be written to the "
                          f"study [{self._tally()}]")
        line = plan_summary_line(self.plans)
        if line:
            self.progress(line)

    def _finish(self, trials, trial, error: str | None) -> None:
        _delete_checkpoint(trial)
        extra = {"attempts": self.attempts.pop(trial.trial_id, 1)}
        params, described = self.recorder.describe(trial.config)
        record = record_from_results(trial.trial_id, (params, {**described, **extra}),
                                     self.results.pop(trial.trial_id, []), error)
        if self.lost is None:
            self.pending.append(record)
            self._flush(attempts=1, current=record)
        self._report(trials, record)

    def _flush(self, attempts: int, current: st.TrialRecord | None = None) -> None:
        """Write the queued records in order, counting each once written; on failure keep
        the rest queued and try again later. A record written later than it finished (all
        but ``current``, the one just finished) gets a line naming its trial number."""
        written = 0
        while self.pending:
            try:
                self.recorder.record([self.pending[0]], attempts=attempts)
            except LeaseLost as exc:
                self._lose(exc)
                return
            except Exception as exc:
                self._outage(exc)
                return
            record = self.pending.pop(0)
            self._count(record)
            written += 1
            if record is not current:
                self.progress(f"{self._which(record)} written late (queued as Ray trial "
                              f"{_ray_id(record)}) · {_outcome(record)}")
        if self._outage_since is not None:
            self.progress(f"the study is writable again after "
                          f"{time.monotonic() - self._outage_since:.0f} s: wrote {written} "
                          f"queued trial(s) [{self._tally()}] · best {self._best()}")
            self._outage_since = None

    def _outage(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.progress(f"cannot write to the study "
                          f"({st.cause(exc, self.recorder.storage_url)}); "
                          f"{len(self.pending)} trial(s) queued, retrying")
        self._next_try = time.monotonic() + self.retry_every

    def _lose(self, exc: LeaseLost) -> None:
        """Another driver holds the run now: write nothing more (it runs what is missing)."""
        self.lost = str(exc)
        self.progress(f"{exc}; {len(self.pending)} finished trial(s) left unrecorded")
        self.pending.clear()

    def _count(self, record: st.TrialRecord) -> None:
        """A record the study now holds: it counts, and so does its value."""
        self.recorded += 1
        if record.status in ("error", "diverged", "invalid"):  # FAIL rows in the study
            self.failed += 1
        value = _value(record)
        if record.status == "completed" and value is not None:
            self.best = value if self.best is None else max(self.best, value)

    def _tally(self) -> str:
        """``3/8`` when every finished trial is in the study, else what is not."""
        count = f"{self.already + self.recorded}/{self.total}"
        if self.lost is not None:
            return f"{count} recorded, lease lost"
        return f"{count} recorded, {len(self.pending)} queued" if self.pending else count

    def _best(self) -> str:
        return f"{self.best:.4f}" if self.best is not None else "-"

    def _report(self, trials, record: st.TrialRecord) -> None:
        plan = (record.history[-1].get("feedback_plan") or {}).get("summary") \
            if record.history else None
        if plan:
            self.plans.append({**plan, "trial": record.number, "value": _value(record)
                               if record.status == "completed" else None})
        running = sum(t.status == "RUNNING" for t in trials)
        params = ", ".join(f"{k}={v if isinstance(v, str) else format(v, '.3g')}"
                           for k, v in record.params.items()) \
            or ", ".join(f"{k}={v}" for k, v in (record.extra or {}).items()
                         if k in ("role", "target_arch", "seed"))
        flag = f" · B {plan['verdict']}" if plan and plan["verdict"] != "ok" else ""
        self.progress(f"[{self._tally()}] {_outcome(record)} · {self._which(record)} "
                      f"({params}) · running {running} · failed {self.failed} · "
                      f"best {self._best()} · {self._timing()}{flag}")

    def _which(self, record: st.TrialRecord) -> str:
        """The trial as ``best`` and ``trials`` number it (Optuna's number, from 0) once the
        study holds it; until then, why it has no number yet."""
        if record.number is not None:
            return f"trial {record.number}"
        if any(record is queued for queued in self.pending):
            return f"queued as Ray trial {_ray_id(record)}"
        if self.lost is not None:
            return "unrecorded"
        return f"Ray trial {_ray_id(record)}"

    def _timing(self) -> str:
        """Elapsed time, and the rest estimated from this run's pace so far."""
        elapsed = time.monotonic() - self.started
        left = self.total - self.already - self.recorded
        text = f"{_duration(elapsed)} elapsed"
        if self.recorded and left > 0:
            text += f", ~{_duration(elapsed / self.recorded * left)} left"
        return text


def _outcome(record: st.TrialRecord) -> str:
    """What a trial came to, for its progress line."""
    values = [r["val_top1"] for r in record.history]
    extra = record.extra or {}
    if record.status == "completed" and record.value is not None:
        per_arch = ", ".join(f"{a} {v:.4f}" for a, v in extra["val_top1_by_arch"].items())
        return f"{extra['objective']} {record.value:.4f} ({per_arch})"
    if record.status == "completed" and values:
        return f"val top-1 {max(values):.4f}"
    return f"{record.status}: {record.reason}"


def _ray_id(record: st.TrialRecord) -> str:
    """Ray's trial id, without the experiment the recorder prefixes it with."""
    return record.ray_trial_id.rsplit("/", 1)[-1]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _value(record: st.TrialRecord) -> float | None:
    """The value the study gives a completed record: its objective, else its best top-1."""
    if record.value is not None:
        return record.value
    values = [r["val_top1"] for r in record.history if "val_top1" in r]
    return max(values) if values else None


def _delete_checkpoint(trial: Any) -> None:
    """A finished trial needs no checkpoint (Tune keeps only the last one): delete it, on
    whatever filesystem the storage path is."""
    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is None:
        return
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except (OSError, ValueError) as exc:  # already gone, or a store that refuses: harmless
        print(f"could not delete the checkpoint of trial {trial.trial_id}: {exc}",
              file=sys.stderr)


def plan_summary_line(plans: list[dict[str, Any]]) -> str | None:
    """One line over the trials of a run whose B was unstable or under-relaxed: how many,
    whether the best trial is among them (its metaparameters are what the sweep reports),
    and the advice of the worst (the trainer's plan names the fix); None when all were fine."""
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
