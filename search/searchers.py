"""Search algorithms: hyperopt TPE behind a concurrency limit (warm-startable), or random."""

from __future__ import annotations

from typing import Any, Sequence

from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.hyperopt import HyperOptSearch

from spaces import SearchSpace

METRIC, MODE = "objective", "max"


class WarmStartedHyperOpt(HyperOptSearch):
    """HyperOptSearch whose TPE history starts with trials evaluated in earlier sweeps.

    Ray's HyperOptSearch can only *re-run* given points; a continued study instead hands TPE
    its finished trials as completed hyperopt trials, so sampling picks up where it stopped.
    """

    def __init__(self, *args: Any, evaluated: Sequence[tuple[dict[str, float], float]] = (),
                 **kwargs: Any) -> None:
        self._evaluated = list(evaluated)
        super().__init__(*args, **kwargs)

    def _setup_hyperopt(self) -> None:
        super()._setup_hyperopt()
        if not self._evaluated or len(self._hpopt_trials.trials):
            return
        import hyperopt as hpo
        from hyperopt.fmin import generate_trials_to_calculate

        history = generate_trials_to_calculate([dict(p) for p, _ in self._evaluated])
        for doc, (_, reward) in zip(history._dynamic_trials, self._evaluated):
            doc["state"] = hpo.base.JOB_STATE_DONE
            doc["result"] = {"loss": self.metric_op * reward, "status": hpo.STATUS_OK}
        history.refresh()
        self._hpopt_trials = history

    @property
    def evaluated_count(self) -> int:
        return sum(t["state"] == 2 for t in self._hpopt_trials.trials)


def make_search_alg(kind: str, space: SearchSpace, *, seed: int, max_concurrent: int,
                    initial_points: int,
                    evaluated: Sequence[tuple[dict[str, float], float]] = ()) -> Any:
    if kind == "tpe":
        tpe = WarmStartedHyperOpt(space.to_hyperopt(), metric=METRIC, mode=MODE,
                                  n_initial_points=initial_points, random_state_seed=seed,
                                  evaluated=evaluated)
        # Without a limit Tune samples every config up front and TPE degrades into random.
        return ConcurrencyLimiter(tpe, max_concurrent=max_concurrent)
    if kind == "random":
        return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)
    raise ValueError(f"unknown searcher {kind!r}; valid: tpe, random")
