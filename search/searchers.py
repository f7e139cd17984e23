"""Search algorithms, one registry entry each: hyperopt's TPE, Optuna's multivariate TPE (each
behind a concurrency limit and warm-startable), and random search.

Like Optuna's samplers (one class per algorithm behind one interface, listed in one place),
every searcher is a ``Searcher`` in ``SEARCHERS``: its name (what ``--searcher`` takes and each
trial records), its label in progress lines, its help, whether it starts from a study's earlier
trials, whether it holds the space itself or Tune samples it (``param_space``), its factory,
and its settings with their defaults (``--searcher-option NAME=VALUE``). The CLI's choices,
the spec's check and the sweep's branches all read the registry, so adding a searcher is
registering one entry here.

hyperopt's TPE runs with hyperopt's own ``tpe.suggest`` as ``HyperOptSearch``'s algorithm, so
that every setting reaches it (Ray forwards only ``n_startup_jobs`` and ``gamma``); its gamma
is ours, not hyperopt's (``TPE_OPTIONS``).

A continued study hands TPE its finished trials as completed hyperopt trials, so sampling picks
up where it stopped. Ray's ``HyperOptSearch`` can only *re-run* given points, so the history
goes in through its public state (``get_state``/``set_state`` carry a ``hyperopt.Trials``),
built with hyperopt's public ``Trials`` methods. Ray's ``OptunaSearch`` takes the history as
``evaluated_rewards``: completed trials of its own in-memory Optuna study (it never writes to
the service's study, which the recorder owns).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from catalogue.errors import UsageError
from catalogue.registry import Registry
from spaces import SearchSpace

METRIC, MODE = "objective", "max"


def _hyperopt_history(points: Sequence[tuple[dict[str, Any], float]],
                      space: SearchSpace | None = None) -> Any:
    """A ``hyperopt.Trials`` holding each (params, reward) as a finished trial. hyperopt keeps
    a categorical (``hp.choice``) value as its index, so a choice's name becomes its index."""
    import hyperopt

    from spaces import Choice

    choices = {n: p for n, p in (space.params.items() if space else ()) if isinstance(p, Choice)}
    points = [({k: choices[k].index(v) if k in choices else v for k, v in params.items()}, r)
              for params, r in points]

    trials = hyperopt.Trials()
    tids = trials.new_trial_ids(len(points))
    miscs = [{"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
              "idxs": {k: [tid] for k in params}, "vals": {k: [v] for k, v in params.items()}}
             for tid, (params, _) in zip(tids, points)]
    # hyperopt minimizes: a reward r (maximized) is the loss -r.
    results = [{"loss": -reward, "status": hyperopt.STATUS_OK} for _, reward in points]
    docs = trials.new_trial_docs(tids, [None] * len(points), results, miscs)
    for doc in docs:
        doc["state"] = hyperopt.JOB_STATE_DONE
    trials.insert_trial_docs(docs)
    trials.refresh()
    return trials


def warm_start(searcher: Any, points: Sequence[tuple[dict[str, Any], float]],
               space: SearchSpace | None = None) -> None:
    """Give a fresh HyperOptSearch the evaluated points of earlier sweeps as its history."""
    state = searcher.get_state()
    if "hyperopt_trials" not in state:
        raise RuntimeError("HyperOptSearch.get_state() no longer carries 'hyperopt_trials': "
                           "the warm start needs updating for this Ray version")
    searcher.set_state({**state, "hyperopt_trials": _hyperopt_history(points, space)})


Points = Sequence[tuple[dict[str, Any], float]]  # earlier trials: (params, reward)


@dataclass(frozen=True)
class SearcherOption:
    """One setting of a searcher (``--searcher-option NAME=VALUE``), with its default."""

    name: str
    default: float
    low: float  # the smallest value it takes
    help: str
    integer: bool = False

    def parse(self, value: Any) -> float:
        """The value as the searcher takes it; UsageError when it is not one."""
        flag = f"--searcher-option {self.name}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{flag} takes a number, got {value!r}")
        if self.integer and value != int(value):
            raise UsageError(f"{flag} takes a whole number, got {value!r}")
        if not value >= self.low:
            raise UsageError(f"{flag} must be at least {self.low:g}, got {value!r}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Searcher:
    """One search algorithm as a sweep uses it."""

    name: str  # what --searcher takes, and what each trial records as its searcher
    label: str  # how a progress line names it
    help: str
    warm_starts: bool  # starts from the study's earlier trials (a continued study's history)
    holds_space: bool  # samples the space itself; False: Tune samples it (``param_space``)
    # (space, seed, max_concurrent, initial_points, evaluated, settings) -> a Tune search
    # algorithm; settings holds a value for each of ``options``
    factory: Callable[[SearchSpace, int, int, int, Points, dict[str, float]], Any]
    options: tuple[SearcherOption, ...] = ()

    def settings(self, given: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Every option's value: the given ones (checked) over the defaults."""
        declared = {o.name: o for o in self.options}
        unknown = sorted(set(given or {}) - set(declared))
        if unknown:
            valid = ", ".join(declared) or "none"
            raise UsageError(f"--searcher-option {unknown[0]!r} is not an option of searcher "
                             f"{self.name!r}; its options: {valid}")
        return {name: o.parse((given or {}).get(name, o.default))
                for name, o in declared.items()}

    def param_space(self, space: SearchSpace) -> dict[str, Any]:
        """What Tune's ``param_space`` gets: the space, unless the searcher holds it."""
        return {} if self.holds_space else space.to_ray()


SEARCHERS: Registry[Searcher] = Registry("searcher")


def _tpe_suggest(settings: dict[str, float]) -> Callable[..., Any]:
    """hyperopt's ``tpe.suggest`` with the searcher's settings, as ``HyperOptSearch.algo``."""
    from hyperopt import tpe

    def suggest(new_ids: list[int], domain: Any, trials: Any, seed: int) -> Any:
        return tpe.suggest(new_ids, domain, trials, seed,
                           n_startup_jobs=int(settings["n_startup"]),
                           gamma=settings["gamma"],
                           n_EI_candidates=int(settings["n_ei_candidates"]),
                           prior_weight=settings["prior_weight"])
    return suggest


def _hyperopt_tpe(space: SearchSpace, seed: int, max_concurrent: int, initial_points: int,
                  evaluated: Points, settings: dict[str, float]) -> Any:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    tpe = HyperOptSearch(space.to_hyperopt(), metric=METRIC, mode=MODE,
                         n_initial_points=initial_points, random_state_seed=seed)
    # Every setting, not just the two HyperOptSearch forwards (n_startup_jobs, gamma).
    tpe.algo = _tpe_suggest({**settings, "n_startup": initial_points})
    if evaluated:
        warm_start(tpe, evaluated, space)
    # Without a limit Tune samples every config up front and TPE degrades into random.
    return ConcurrencyLimiter(tpe, max_concurrent=max_concurrent)


def _optuna_tpe(space: SearchSpace, seed: int, max_concurrent: int, initial_points: int,
                evaluated: Points, settings: dict[str, float]) -> Any:
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # multivariate: the joint density of alpha, beta, ... rather than one per parameter,
    # which is what these coupled metaparameters need; group: a space may change between
    # continued sweeps.
    with warnings.catch_warnings():  # multivariate is marked experimental, since 2.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(n_startup_trials=initial_points, seed=seed,
                                             multivariate=True, group=True)
    opt = OptunaSearch(space.to_optuna(), metric=METRIC, mode=MODE, sampler=sampler,
                       points_to_evaluate=[dict(p) for p, _ in evaluated] or None,
                       evaluated_rewards=[r for _, r in evaluated] or None)
    return ConcurrencyLimiter(opt, max_concurrent=max_concurrent)


def _random(space: SearchSpace, seed: int, max_concurrent: int, initial_points: int,
            evaluated: Points, settings: dict[str, float]) -> Any:
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)


# hyperopt's defaults but gamma, 0.25 there: its good density is then the best
# ceil(0.25 * sqrt(n)) trials, 1 of 16 and 2 of 64, and TPE explores almost like random
# search (docs/benchmarks.md, "TPE vs. random search"). 1.5 makes it the best 6 of 16, 12 of
# 64, 15 of 100 (hyperopt caps the count at 25, from n = 278 on).
TPE_OPTIONS = (
    SearcherOption("gamma", 1.5, 1e-3, "TPE's good density is made of the best "
                   "ceil(gamma * sqrt(n)) of n finished trials (at most 25)"),
    SearcherOption("n_ei_candidates", 24, 1, "draws from the good density per proposal; the "
                   "one with the best ratio of good to bad density is proposed", integer=True),
    SearcherOption("prior_weight", 1.0, 1e-3, "weight of the space's prior in each density"),
)
SEARCHERS.register("tpe", Searcher("tpe", "TPE", "hyperopt's TPE", warm_starts=True,
                                   holds_space=True, factory=_hyperopt_tpe,
                                   options=TPE_OPTIONS))
SEARCHERS.register("optuna", Searcher("optuna", "Optuna's TPE",
                                      "Optuna's multivariate TPESampler", warm_starts=True,
                                      holds_space=True, factory=_optuna_tpe))
SEARCHERS.register("random", Searcher("random", "random search", "the baseline",
                                      warm_starts=False, holds_space=False, factory=_random))


def searchers_help() -> str:
    return "; ".join(f"{s.name}: {s.help}" for _, s in SEARCHERS.items())


def searcher_options_help() -> str:
    """Each searcher's settings with their defaults, for ``--searcher-option``'s help."""
    return "; ".join(f"{s.name}: " + ", ".join(f"{o.name} ({o.help}; default {o.default:g})"
                                                for o in s.options)
                     for _, s in SEARCHERS.items() if s.options)


def make_search_alg(kind: str, space: SearchSpace, *, seed: int, max_concurrent: int,
                    initial_points: int, evaluated: Points = (),
                    options: Mapping[str, Any] | None = None) -> Any:
    """The Tune search algorithm of the searcher named ``kind`` (an unknown name is a
    ``UsageError`` listing the valid ones); ``evaluated`` reaches only one that warm-starts;
    ``options`` overrides the searcher's declared settings."""
    searcher = SEARCHERS.get(kind)
    seed %= 2**32  # numpy's seeds; a continued sweep offsets the seed by its history
    return searcher.factory(space, seed, max_concurrent, initial_points,
                            evaluated if searcher.warm_starts else (), searcher.settings(options))
