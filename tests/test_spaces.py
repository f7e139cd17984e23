"""Search spaces: one declaration, three converters that agree; overrides and their errors."""

import math
import random
import subprocess
import sys

import pytest
from hyperopt.pyll import stochastic
from optuna.distributions import FloatDistribution
from ray.tune.search.sample import LogUniform, Uniform

import spaces
import trainer
from catalogue.errors import UnknownName
from catalogue.rule import RULES
from spaces import Param, SpaceError, apply_overrides, default_space


@pytest.mark.parametrize("rule", spaces.list_spaces())
def test_space_names_match_the_rule(rule):
    declared = trainer.rule_declaration(rule)
    space = default_space(rule)
    assert set(space.params) == set(declared.metaparameters)
    for name, default in declared.defaults.items():  # official defaults lie inside
        assert space.params[name].contains(default), (name, default)
    assert set(spaces.list_spaces()) == set(trainer.list_rules())


def test_an_alias_has_its_rules_space_and_is_never_listed():
    aliases = RULES.aliases()
    assert aliases  # the sign family's old name, at least
    for alias, target in aliases.items():
        space = default_space(alias)
        assert space.rule == alias  # studies stored under the old name keep their space
        assert space.params == default_space(target).params
        assert alias not in spaces.list_spaces()
    with pytest.raises(UnknownName, match="unknown rule"):
        default_space("no_such_rule")


@pytest.mark.parametrize("rule", [r for r in spaces.list_spaces() if default_space(r).params])
def test_conversions_agree(rule):
    space = default_space(rule, tune_lr=True).with_param(Param("beta", 0.1, 0.5, log=False)) \
        if "beta" in default_space(rule).params else default_space(rule, tune_lr=True)
    ray_space, hp_space, opt_space = space.to_ray(), space.to_hyperopt(), space.to_optuna()
    assert set(ray_space) == set(hp_space) == set(opt_space) == set(space.params)
    rng = random.Random(0)
    for name, p in space.params.items():
        if not isinstance(p, Param) or p.integer:
            continue  # an int or categorical rule option: tests/test_rule_options.py
        domain = ray_space[name]
        assert (domain.lower, domain.upper) == (p.low, p.high)
        assert isinstance(domain.get_sampler(), LogUniform if p.log else Uniform)
        dist = opt_space[name]
        assert isinstance(dist, FloatDistribution)
        assert (dist.low, dist.high, dist.log) == (p.low, p.high, p.log)
        samples = [stochastic.sample(hp_space[name], rng=__import__("numpy").random
                                     .default_rng(rng.randrange(10**6))) for _ in range(400)]
        assert all(p.low <= s <= p.high for s in samples)
        ray_samples = domain.sample(size=400)
        assert all(p.low <= s <= p.high for s in ray_samples)
        # Same scale: the median of log-uniform samples sits near the geometric mid-point.
        mid = math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2
        for draw in (samples, ray_samples):
            median = sorted(draw)[len(draw) // 2]
            if p.log:
                assert abs(math.log10(median) - math.log10(mid)) < 0.6 * math.log10(
                    p.high / p.low) / 4
            else:
                assert abs(median - mid) < 0.15 * (p.high - p.low)


def test_overrides_from_flags_and_files(tmp_path):
    base = default_space("weight_mirror")
    s = apply_overrides(base, ["alpha=1e-5:1e-1:log", "lr=0.01:0.5:linear"], ["sigma=1.0"])
    assert s.params["alpha"] == Param("alpha", 1e-5, 1e-1, True)
    assert s.params["lr"] == Param("lr", 0.01, 0.5, False)
    assert "sigma" not in s.params and s.fixed == {"sigma": 1.0}
    toml = tmp_path / "s.toml"
    toml.write_text('[space]\nbeta = "1e-4:1e-2"\nalpha = {low = 1e-4, high = 1.0}\n'
                    '[fix]\nsigma = 0.5\n')
    s = apply_overrides(base, file=str(toml))
    assert s.params["beta"] == Param("beta", 1e-4, 1e-2) and s.fixed == {"sigma": 0.5}
    yml = tmp_path / "s.yaml"
    yml.write_text("space:\n  beta: 1e-4:1e-2:linear\nfix:\n  alpha: 0.001\n")
    s = apply_overrides(base, ["beta=1e-3:1e-1"], file=str(yml))  # flags win over the file
    assert s.params["beta"] == Param("beta", 1e-3, 1e-1) and s.fixed == {"alpha": 0.001}


@pytest.mark.parametrize("ranges,fixes,match", [
    (["alpha=1:0.1"], [], "must be below"),
    (["alpha=0:1:log"], [], "log scale needs positive"),
    (["alpha=-1:1"], [], "log scale needs positive"),
    (["gamma=1e-3:1"], [], "unknown parameter 'gamma'"),
    ([], ["temperature=1"], "unknown parameter 'temperature'"),
    (["alpha=1e-3"], [], "expected LOW:HIGH"),
    (["alpha=a:b"], [], "bounds must be numbers"),
    (["alpha=1e-3:1:cubic"], [], "scale must be log or linear"),
    ([], ["sigma=x"], "not a number"),
])
def test_bad_overrides(ranges, fixes, match):
    with pytest.raises(SpaceError, match=match):
        apply_overrides(default_space("weight_mirror"), ranges, fixes)


def test_bad_space_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[space\n")
    with pytest.raises(SpaceError, match="malformed"):
        apply_overrides(default_space("weight_mirror"), file=str(bad))
    with pytest.raises(SpaceError, match="does not exist"):
        apply_overrides(default_space("weight_mirror"), file=str(tmp_path / "none.toml"))
    extra = tmp_path / "extra.yaml"
    extra.write_text("space: {}\nsearcher: tpe\n")
    with pytest.raises(SpaceError, match="only the tables"):
        apply_overrides(default_space("weight_mirror"), file=str(extra))


def test_spaces_import_no_torch():
    code = "import sys, spaces; spaces.default_space('weight_mirror'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_integer_options_are_sampled_as_whole_numbers_by_all_three():
    space = apply_overrides(default_space("weight_mirror"), ["batch_size=16:256:log",
                                                             "train_subset=100:900:linear"])
    assert space.params["batch_size"].integer and space.params["train_subset"].integer
    ray_space, hp_space, opt_space = space.to_ray(), space.to_hyperopt(), space.to_optuna()
    import numpy as np
    from optuna.distributions import IntDistribution
    rng = np.random.default_rng(0)
    for name in ("batch_size", "train_subset"):
        p = space.params[name]
        assert isinstance(opt_space[name], IntDistribution)
        assert (opt_space[name].low, opt_space[name].high) == (p.low, p.high)
        draws = [stochastic.sample(hp_space[name], rng=rng) for _ in range(300)]
        draws += list(ray_space[name].sample(size=300))
        assert all(float(v).is_integer() and p.low <= v <= p.high for v in draws)
        assert min(draws) < p.low + 0.2 * (p.high - p.low) < max(draws)
    with pytest.raises(SpaceError, match="whole-number bounds"):
        apply_overrides(default_space("weight_mirror"), ["batch_size=16.5:64"])
    with pytest.raises(SpaceError, match="--space batch_size: 0 is out of range"):
        apply_overrides(default_space("weight_mirror"), ["batch_size=0:64:linear"])


def test_the_noise_distribution_is_a_categorical_dimension_of_all_three(tmp_path):
    space = apply_overrides(default_space("information_alignment"),
                            ["noise_distribution=normal,uniform"])
    choice = space.params["noise_distribution"]
    assert isinstance(choice, spaces.Choice) and choice.choices == ("normal", "uniform")
    import numpy as np
    from optuna.distributions import CategoricalDistribution
    from search.specs import space_from_dict
    opt = space.to_optuna()["noise_distribution"]
    assert isinstance(opt, CategoricalDistribution) and opt.choices == ("normal", "uniform")
    rng = np.random.default_rng(0)
    hp_draws = {stochastic.sample(space.to_hyperopt()["noise_distribution"], rng=rng)
                for _ in range(50)}
    ray_draws = set(space.to_ray()["noise_distribution"].sample(size=50))
    assert hp_draws == ray_draws == {"normal", "uniform"}
    assert space_from_dict(space.to_dict()) == space  # a study's spec round-trips
    assert "noise_distribution=normal|uniform" in space.describe()
    held = apply_overrides(default_space("weight_mirror"), fixes=["noise_distribution=uniform"])
    assert held.fixed["noise_distribution"] == "uniform"
    file = tmp_path / "s.toml"
    file.write_text('[space]\nnoise_distribution = ["uniform", "normal"]\n')
    assert apply_overrides(default_space("weight_mirror"), file=str(file)).params[
        "noise_distribution"].choices == ("uniform", "normal")


@pytest.mark.parametrize("rule,ranges,fixes,match", [
    ("weight_mirror", ["noise_distribution=normal,cauchy"], [], "comma-separated list of normal"),
    ("weight_mirror", ["noise_distribution=normal"], [], "at least two values"),
    ("weight_mirror", ["noise_distribution=normal,normal"], [], "listed twice"),
    ("weight_mirror", [], ["noise_distribution=3"], "must be one of normal, uniform"),
    ("feedback_alignment", ["noise_distribution=normal,uniform"], [], "draws no input noise"),
    ("symmetric_alignment", [], ["noise_distribution=uniform"], "draws no input noise"),
])
def test_bad_noise_distribution_overrides(rule, ranges, fixes, match):
    with pytest.raises(SpaceError, match=match):
        apply_overrides(default_space(rule), ranges, fixes)


def test_hyperopt_warm_start_keeps_a_choice_as_its_index():
    from search.searchers import _hyperopt_history
    space = apply_overrides(default_space("weight_mirror"), ["noise_distribution=normal,uniform"])
    history = _hyperopt_history([({"alpha": 1e-3, "beta": 1e-3, "sigma": 1.0,
                                   "noise_distribution": "uniform"}, 0.5)], space)
    assert history.trials[0]["misc"]["vals"]["noise_distribution"] == [1]


def test_a_sweep_on_an_architecture_drops_the_choices_its_mechanism_refuses_there():
    """Predictive coding's strict predictions and learned error weights run on sequential
    models only: a ResNet sweep holds them at the values it can train instead of spending
    trials the trainer records as invalid; an MLP sweep searches them."""
    from search.specs import SweepSpec

    resnet = SweepSpec(rule="predictive_coding", arch="resnet8").resolved_space()
    assert resnet.fixed == {"prediction": "fixed", "error_weights": "identity"}
    assert "prediction" not in resnet.params and "backward" in resnet.params
    mlp = SweepSpec(rule="predictive_coding", arch="mlp").resolved_space()
    assert mlp.params["prediction"].choices == ("fixed", "strict") and not mlp.fixed
    both = SweepSpec(rule="predictive_coding", arch="mlp", archs=["mlp", "resnet8"])
    assert both.resolved_space().fixed["prediction"] == "fixed"  # every trial trains both


@pytest.mark.parametrize("rule", ["e_prop", "dynamic_inversion"])
def test_a_training_option_is_judged_on_a_model_the_rule_trains(rule):
    """--space lr=... for a rule that trains only RNNs (or only MLPs) is checked on a model of
    that family, not refused because the default model is one the rule cannot train."""
    space = apply_overrides(default_space(rule), ["lr=0.01:0.3"], ["momentum=0"])
    assert space.params["lr"].low == 0.01 and space.fixed["momentum"] == 0
    with pytest.raises(SpaceError, match="lr: -0.1 is out of range"):
        apply_overrides(default_space(rule), ["lr=-0.1:0.3:linear"])


def test_a_model_option_holds_the_rule_options_it_decides():
    """Under Dale's law the RNN declares ModProp's two cell types: a sweep holds cell_types
    at 2 rather than sample values every trial would refuse; without it the types are
    searched, never above the smallest RNN's 32 units."""
    from spaces.registry import for_architectures

    space = default_space("modprop")
    assert space.params["cell_types"].high == 32
    dale = for_architectures(space, ["rnn32"], {"excitatory": 0.8})
    assert "cell_types" not in dale.params and dale.fixed["cell_types"] == 2
    assert "mu" in dale.params
    plain = for_architectures(space, ["rnn32"], {"excitatory": 0.0})
    assert "cell_types" in plain.params
