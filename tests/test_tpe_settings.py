"""hyperopt's TPE as a sweep builds it: its settings reach hyperopt, and with them it exploits.

No Ray session and no training: the searcher is driven the way Tune drives it (suggest, then
complete, two trials in flight behind the concurrency limit) on a cheap analytic objective."""

from __future__ import annotations

import logging
import math
import statistics

import numpy as np
import pytest

from catalogue.errors import UsageError
from search.cli import build_parser
from search.cli.sweep import build_spec
from search.searchers import SEARCHERS, make_search_alg, warm_start
from search.specs import SweepSpec
from spaces import default_space

SPACE = default_space("weight_mirror", tune_lr=True)  # alpha, beta, sigma, lr: all log-scaled
logging.getLogger("hyperopt").setLevel(logging.WARNING)


def _value(params: dict[str, float]) -> float:
    """A smooth peak at lr = 0.05, sigma = 1 in log space, zero where lr or beta is too
    large (a diverged run), like a short training run's validation accuracy."""
    lr, beta, sigma = (math.log10(params[k]) for k in ("lr", "beta", "sigma"))
    if lr > -0.5 or beta > 0.3:
        return 0.0
    return 0.7 * math.exp(-(lr + 1.3) ** 2 / (2 * 0.35 ** 2) - sigma ** 2 / (2 * 0.8 ** 2))


def _history(n: int, seed: int) -> list[tuple[dict[str, float], float]]:
    rng = np.random.default_rng(seed)
    points = [{k: float(10 ** rng.uniform(math.log10(p.low), math.log10(p.high)))
               for k, p in SPACE.params.items()} for _ in range(n)]
    return [(p, _value(p)) for p in points]


def _search(seed: int, trials: int, options: dict | None = None, concurrent: int = 2
            ) -> list[float]:
    """Each trial's value, in the order trials end (the oldest in flight ends first)."""
    alg = make_search_alg("tpe", SPACE, seed=seed, max_concurrent=concurrent,
                          initial_points=trials // 4, options=options)
    flight: list[tuple[str, dict]] = []
    values: list[float] = []
    while len(values) < trials:
        while len(flight) < concurrent and len(values) + len(flight) < trials:
            tid = f"t{len(values) + len(flight)}"
            flight.append((tid, alg.suggest(tid)))
        tid, config = flight.pop(0)
        values.append(_value(config))
        alg.on_trial_complete(tid, {"objective": values[-1]})
    return values


def test_the_settings_reach_hyperopt():
    """The proposal is hyperopt's own ``tpe.suggest`` under exactly these settings: called
    directly on the same history and seed it proposes the same point, and under hyperopt's
    defaults another one."""
    import hyperopt
    from hyperopt import tpe

    options = {"gamma": 2.0, "n_ei_candidates": 7, "prior_weight": 0.3}
    alg = make_search_alg("tpe", SPACE, seed=5, max_concurrent=2, initial_points=4,
                          evaluated=_history(12, 0), options=options)
    proposed = alg.suggest("t0")

    def direct(**settings: float) -> dict[str, float]:
        fresh = make_search_alg("tpe", SPACE, seed=5, max_concurrent=2, initial_points=4)
        warm_start(fresh.searcher, _history(12, 0), SPACE)
        trials = fresh.searcher.get_state()["hyperopt_trials"]
        seed = np.random.RandomState(5).randint(2**31 - 1)  # HyperOptSearch's first draw
        domain = hyperopt.Domain(lambda spc: spc, SPACE.to_hyperopt())
        doc = tpe.suggest(trials.new_trial_ids(1), domain, trials, seed, n_startup_jobs=4,
                          **settings)[0]
        return {k: v[0] for k, v in doc["misc"]["vals"].items()}

    assert proposed == pytest.approx(direct(gamma=2.0, n_EI_candidates=7, prior_weight=0.3))
    assert proposed != pytest.approx(direct())


def test_defaults_are_declared_and_bad_settings_are_usage_errors():
    settings = SEARCHERS.get("tpe").settings()
    assert settings == {o.name: o.default for o in SEARCHERS.get("tpe").options}
    assert SEARCHERS.get("tpe").settings({"gamma": 0.5})["gamma"] == 0.5
    with pytest.raises(UsageError, match="'gama' is not an option of searcher 'tpe'; its "
                                         "options: gamma, n_ei_candidates, prior_weight"):
        SweepSpec(searcher_options={"gama": 1.0}).validate()
    with pytest.raises(UsageError, match="n_ei_candidates takes a whole number"):
        SweepSpec(searcher_options={"n_ei_candidates": 2.5}).validate()
    with pytest.raises(UsageError, match="gamma must be at least"):
        SweepSpec(searcher_options={"gamma": 0}).validate()
    with pytest.raises(UsageError, match="its options: none"):
        SweepSpec(searcher="optuna", searcher_options={"gamma": 1.0}).validate()
    args = build_parser().parse_args(["sweep", "--searcher-option", "gamma=2",
                                      "--searcher-option", "n_ei_candidates=50"])
    assert build_spec(args).searcher_options == {"gamma": 2, "n_ei_candidates": 50}


def test_the_default_tpe_exploits_where_hyperopts_defaults_barely_do():
    """Over the second half of a 48-trial search, the default TPE's trials are worth far more
    than those of hyperopt's own defaults (gamma 0.25: the best 2 trials make its good
    density) and of random points."""
    seeds = range(3)
    late = {name: statistics.fmean(statistics.fmean(v[24:]) for v in runs) for name, runs in {
        "ours": [_search(s, 48) for s in seeds],
        "hyperopt": [_search(s, 48, {"gamma": 0.25}) for s in seeds],
        "random": [[v for _, v in _history(48, 100 + s)] for s in seeds]}.items()}
    assert late["ours"] > 2.5 * late["hyperopt"], late  # measured: 0.61 against 0.21
    assert late["ours"] > 4 * late["random"], late  # and 0.10


def test_a_failed_trial_warm_starts_tpe_at_the_tasks_floor():
    """A diverged trial reports the task's floor live (R^2's -1); a continued sweep's warm
    start gives it the same, so that it still ranks below a poor regression that ran."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from search.scores import task_of_dataset
    from search.sweep import evaluated_points

    space = default_space("symmetric_alignment")
    dists = {k: FloatDistribution(p.low, p.high, log=True) for k, p in space.params.items()}
    study = optuna.create_study(direction="maximize")
    poor = {"alpha": 1e-3, "beta": 1e-3}
    study.add_trial(create_trial(params=poor, distributions=dists, value=-0.5))
    diverged = {"alpha": 5.0, "beta": 5.0}
    study.add_trial(create_trial(params=diverged, distributions=dists, state=TrialState.FAIL))
    floor = task_of_dataset("pattern_generation").floor
    assert floor < -0.5
    assert evaluated_points(study, space, floor) == [(poor, -0.5), (diverged, floor)]
    assert evaluated_points(study, space)[1] == (diverged, 0.0)  # classification's floor
