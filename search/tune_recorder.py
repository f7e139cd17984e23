"""The live Ray Tune callback that records each trial into its study as the trial ends, and
prints one progress line per trial (``search.recording`` holds what it builds on, which
needs no Ray: the record of a Ray trial, the recorder, the reconciliation).

Every count is of trials the study holds, never of what was merely queued: a trial whose write
failed is queued, said to be, retried from the Tune loop, and counted (its value in the
running best) once written.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from ray import tune

from catalogue.errors import LeaseLost
from search import storage as st
from search.recording import (FLAGGED, Recorder, error_text, plan_summary_line, print_progress,
                              record_from_results)
from search.scores import best_score, scores_by_arch, task_of_record


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
                       else f"{_label(self.results[trial.trial_id])} "
                            f"{result['arch_score']:.4f}")
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
        flag = (f" · B {plan['verdict']}" if plan and plan["verdict"] in FLAGGED else "")
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
    """What a trial came to, for its progress line (its score named by its task)."""
    best = best_score(record.history)
    extra = record.extra or {}
    if record.status == "completed" and record.value is not None:
        per_arch = ", ".join(f"{a} {v:.4f}" for a, v in scores_by_arch(extra).items())
        return f"{extra['objective']} {record.value:.4f} ({per_arch})"
    if record.status == "completed" and best is not None:
        return f"{_label(record.history)} {best:.4f}"
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
    """The value the study gives a completed record: its objective, else its best score."""
    if record.value is not None:
        return record.value
    return best_score(record.history)


def _label(rows: list[dict[str, Any]]) -> str:
    """How the trial's task names its score ("val top-1", "val R^2"), read off its epochs."""
    scored = [r for r in rows if "epoch" in r]
    return task_of_record(scored[-1] if scored else {}).score_label


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
