"""Searchers come from one registry: the CLI's choices and help, the spec's check and the
sweep's branches (warm start, who holds the space) all read it. No Ray session."""

from __future__ import annotations

import argparse

import pytest

from catalogue.errors import UsageError
from search.cli import build_parser
from search.searchers import SEARCHERS, Searcher, make_search_alg
from search.specs import SweepSpec
from spaces import default_space


def _sweep_searcher_action(parser: argparse.ArgumentParser) -> argparse.Action:
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in subs.choices["sweep"]._actions if a.dest == "searcher")


def test_each_searcher_says_how_the_sweep_treats_it():
    assert SEARCHERS.names() == ["tpe", "optuna", "random"]
    space = default_space("weight_mirror")
    for name, searcher in SEARCHERS.items():
        assert searcher.name == name and searcher.label and searcher.help
        # A searcher that holds the space gets none from Tune; random is given it.
        assert (searcher.param_space(space) == {}) == searcher.holds_space
    assert [n for n, s in SEARCHERS.items() if s.warm_starts] == ["tpe", "optuna"]
    assert set(SEARCHERS.get("random").param_space(space)) == set(space.to_ray()) != set()


def test_the_cli_and_the_spec_read_the_registry(monkeypatch):
    action = _sweep_searcher_action(build_parser())
    assert list(action.choices) == SEARCHERS.names()
    assert all(f"{name}: " in action.help for name in SEARCHERS.names())
    with pytest.raises(UsageError, match="--searcher must be one of tpe, optuna, random"):
        SweepSpec(searcher="smac").validate()

    # Adding a searcher is registering it: the CLI offers it and the spec accepts it.
    extra = Searcher("grid", "grid search", "every point of a grid", warm_starts=False,
                     holds_space=False, factory=lambda *args: None)
    monkeypatch.setitem(SEARCHERS._entries, "grid", extra)
    assert "grid" in _sweep_searcher_action(build_parser()).choices
    assert SweepSpec(searcher="grid").searcher in SEARCHERS


def test_make_search_alg_builds_from_the_entry():
    from ray.tune.search import BasicVariantGenerator

    space = default_space("weight_mirror")
    history = [({"alpha": 0.1, "beta": 0.1, "sigma": 1.0}, 0.5)]
    alg = make_search_alg("random", space, seed=2**32 + 3, max_concurrent=2, initial_points=1,
                          evaluated=history)  # random takes no history: ignored
    assert isinstance(alg, BasicVariantGenerator)
    with pytest.raises(UsageError, match="unknown searcher 'smac'; valid: optuna, random, tpe"):
        make_search_alg("smac", space, seed=0, max_concurrent=1, initial_points=1)
