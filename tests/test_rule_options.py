"""A rule's typed options beside its coefficients: declared, bound, searched and set from the
command line (an int option on a log range and a categorical one, on a rule registered here)."""

import numpy as np
import pytest
from hyperopt.pyll import stochastic
from optuna.distributions import CategoricalDistribution, IntDistribution
from torch import nn

import trainer
from catalogue.errors import UsageError
from catalogue.rule import RULES, Rule, RuleOption, get_rule
from catalogue.training import TrainConfig
from spaces import SPACES, Choice, Param, apply_overrides, default_space
from spaces.space import SpaceError

NAME = "probe_relaxation"


@pytest.fixture
def probe_rule(monkeypatch):
    RULES.names(), SPACES.names()  # discovered before patching, so the probe is undone after
    monkeypatch.setattr(SPACES, "_entries", dict(SPACES._entries))
    monkeypatch.setitem(RULES._entries, NAME, Rule(
        NAME, "a probe with typed options", "this test", mechanism="fixed",
        options=(RuleOption("inference_steps", "int", 20, low=1, high=1000, log=True,
                            help="relaxation steps per example"),
                 RuleOption("derivatives", "categorical", "on", choices=("on", "off")))))
    return RULES.get(NAME)


def test_options_are_declared_with_checked_kinds_ranges_and_defaults():
    with pytest.raises(ValueError, match="whole-number bounds"):
        RuleOption("n", "int", 2, low=1, high=9.5)
    with pytest.raises(ValueError, match="default is invalid"):
        RuleOption("n", "int", 0, low=1, high=9)
    with pytest.raises(ValueError, match="two or more distinct"):
        RuleOption("d", "categorical", "on", choices=("on",))
    with pytest.raises(ValueError, match="kind must be one of int, float, categorical"):
        RuleOption("d", "bool", True)
    with pytest.raises(ValueError, match="not coefficients"):
        Rule("x", "", "", "learned", terms={"decay": "alpha"}, defaults={"alpha": 1.0},
             options=(RuleOption("alpha", "float", 1.0, low=0, high=2),))


def test_bind_validates_options_in_one_line(probe_rule):
    assert dict(get_rule(NAME).options) == {"inference_steps": 20, "derivatives": "on"}
    bound = get_rule(NAME, inference_steps=5.0, derivatives="off")  # a searcher's 5.0 is 5
    assert dict(bound.options) == {"inference_steps": 5, "derivatives": "off"}
    assert isinstance(bound.options["inference_steps"], int)
    assert probe_rule.metaparameters == ("inference_steps", "derivatives")
    assert probe_rule.describe_parameter("inference_steps") == "relaxation steps per example"
    for bad, message in [({"inference_steps": 2.5}, "must be a whole number"),
                         ({"inference_steps": 2000}, r"must be in \[1, 1000\]"),
                         ({"inference_steps": "many"}, "is not a whole number"),
                         ({"derivatives": "maybe"}, "must be one of on, off"),
                         ({"steps": 3}, "has no metaparameter steps")]:
        with pytest.raises(UsageError, match=message) as caught:
            get_rule(NAME, **bad)
        assert "\n" not in str(caught.value)


def test_convert_takes_options(probe_rule):
    model = trainer.convert(nn.Sequential(nn.Linear(4, 3)), NAME, inference_steps=7)
    configured = model.creditsweep_rule
    assert dict(configured.options) == {"inference_steps": 7, "derivatives": "on"}
    again = trainer.convert(nn.Sequential(nn.Linear(4, 3)), configured, derivatives="off")
    assert dict(again.creditsweep_rule.options) == {"inference_steps": 7, "derivatives": "off"}
    with pytest.raises(UsageError, match="must be a whole number"):
        trainer.convert(nn.Sequential(nn.Linear(4, 3)), NAME, inference_steps=1.5)


def test_the_space_gives_each_option_its_distribution_in_all_three(probe_rule):
    space = default_space(NAME)
    steps, derivatives = space.params["inference_steps"], space.params["derivatives"]
    assert steps == Param("inference_steps", 1, 1000, log=True, integer=True)
    assert derivatives == Choice("derivatives", ("on", "off"))
    opt = space.to_optuna()
    assert opt["inference_steps"] == IntDistribution(1, 1000, log=True)
    assert isinstance(opt["derivatives"], CategoricalDistribution)
    assert opt["derivatives"].choices == ("on", "off")
    from ray.tune.search.sample import Categorical, Integer, LogUniform
    ray = space.to_ray()
    assert isinstance(ray["inference_steps"], Integer)
    assert isinstance(ray["inference_steps"].get_sampler(), LogUniform)
    assert (ray["inference_steps"].lower, ray["inference_steps"].upper) == (1, 1001)
    assert isinstance(ray["derivatives"], Categorical)
    hp = space.to_hyperopt()
    rng = np.random.default_rng(0)
    draws = [stochastic.sample(hp["inference_steps"], rng=rng) for _ in range(200)]
    draws += list(ray["inference_steps"].sample(size=200))
    assert all(float(v).is_integer() and 1 <= v <= 1000 for v in draws)
    assert {stochastic.sample(hp["derivatives"], rng=rng) for _ in range(40)} == {"on", "off"}


def test_set_fix_and_space_take_options(probe_rule):
    from search.cli.base import parse_assignments
    from search.trial_io import split_sampled

    sets = parse_assignments(["inference_steps=5", "derivatives=off"], "--set")
    config = TrainConfig(rule=NAME, metaparameters=sets)
    config.validate()
    configured = get_rule(config.rule, **config.metaparameters)
    assert dict(configured.options) == {"inference_steps": 5, "derivatives": "off"}
    with pytest.raises(UsageError, match="must be a whole number"):
        TrainConfig(rule=NAME, metaparameters=parse_assignments(["inference_steps=2.5"],
                                                                "--set")).validate()

    space = apply_overrides(default_space(NAME), ["inference_steps=2:50"], ["derivatives=off"])
    assert space.params["inference_steps"] == Param("inference_steps", 2, 50, log=True,
                                                    integer=True)
    assert space.fixed == {"derivatives": "off"}
    held = apply_overrides(default_space(NAME), fixes=["inference_steps=5"])
    meta, train = split_sampled(NAME, {**held.fixed, "lr": 0.1})
    assert meta == {"inference_steps": 5} and isinstance(meta["inference_steps"], int)
    assert train == {"lr": 0.1}
    for ranges, fixes, message in [
            ([], ["inference_steps=2.5"], "--fix inference_steps: 2.5 is out of range"),
            (["inference_steps=1:2000"], [], "--space inference_steps: 2000 is out of range"),
            (["inference_steps=1.5:20"], [], "whole-number bounds"),
            ([], ["derivatives=maybe"], "must be one of on, off"),
            (["derivatives=on,maybe"], [], "comma-separated list of on, off")]:
        with pytest.raises(SpaceError, match=message) as caught:
            apply_overrides(default_space(NAME), ranges, fixes)
        assert "\n" not in str(caught.value)


def test_a_rule_with_options_trains(probe_rule):
    result = trainer.train(dict(rule=NAME, arch="mlp", epochs=1, max_steps_per_epoch=2,
                                metaparameters={"inference_steps": 3}, feedback_plan=False,
                                diagnostics=False, device="cpu"))
    assert result.status == "completed"
    assert result.config["metaparameters"] == {"inference_steps": 3}


def test_options_leave_the_prior_rules_alone():
    # activation_relaxation is the first rule that declares options (tests/
    # test_activation_relaxation.py); the rules of the mechanisms added with it (dynamic
    # inversion, predictive coding, phaseless alignment, ModProp) too; every rule before them
    # has none.
    with_options = ("activation_relaxation", "dynamic_inversion", "predictive_coding",
                    "phaseless_alignment", "truncated_bptt", "e_prop", "modprop",
                    "direct_feedback_alignment")
    with_options += ("usf", "frsf", "brsf", "sign_symmetry")  # B's scale (issue 30)
    assert all(not RULES.get(n).options and dict(get_rule(n).options) == {}
               for n in RULES.names() if n not in with_options)
