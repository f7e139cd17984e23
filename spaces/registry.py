"""Default search spaces, derived from the rule catalogue: one per rule, in one registry.

Coefficients span 1e-6..10 on a log scale: the official defaults (1e-3..2e-3) sit in the middle
and the top decades are where rules diverge, which the service exists to find. The input-noise
sigma spans 1e-2..10. A rule may declare other ranges (``Rule.search_ranges``). Besides its
metaparameters, a space knows the tunable training options (``TrainConfig``), which ``--space``
and ``--fix`` may add; the learning rate has a default range for ``tune_lr``.
"""

from __future__ import annotations

from typing import Mapping

from catalogue.rule import DEFAULT_NOISE, NOISE_STD, Rule, list_rules, rule_declaration
from catalogue.registry import Registry
from catalogue.training import tunable_options
from spaces.space import Choice, Dimension, Param, SearchSpace

COEFFICIENT = (1e-6, 10.0)
NOISE = (1e-2, 10.0)
LEARNING_RATE = Param("lr", 1e-3, 1.0)


def derive_space(rule: Rule, called: str | None = None) -> SearchSpace:
    """The rule's coefficients, log-uniform over their standard or declared ranges, and its
    typed options over their declared distributions (int, float or a choice), under
    ``called`` (default: the rule's own name; an older name of the rule keeps its studies' spaces)."""
    params: dict[str, Dimension] = {}
    for name in rule.defaults:
        low, high = rule.search_ranges.get(name, NOISE if name == NOISE_STD else COEFFICIENT)
        params[name] = Param(name, low, high)
    for option in rule.options:  # typed options: their declared distribution
        if option.kind == "categorical":
            params[option.name] = Choice(option.name, option.choices)
        else:
            assert option.low is not None and option.high is not None
            low, high = option.search or (option.low, option.high)
            params[option.name] = Param(option.name, low, high, log=option.log,
                                        integer=option.kind == "int")
    return SearchSpace(called or rule.name, params, known=rule.metaparameters + tunable_options())


def _derive_every_rule() -> None:
    for name in list_rules():
        SPACES.register(name, derive_space(rule_declaration(name)))


SPACES: Registry[SearchSpace] = Registry("space", discover=_derive_every_rule)


def register_space(space: SearchSpace) -> SearchSpace:
    """A hand-written space for a rule, used instead of the derived one."""
    return SPACES.register(space.rule, space)


def list_spaces() -> list[str]:
    return sorted(SPACES.names())


_ALIAS_SPACES: dict[str, SearchSpace] = {}  # kept apart: an old name is never listed


def default_space(rule: str, tune_lr: bool = False) -> SearchSpace:
    declared = rule_declaration(rule)  # an unknown name fails here, with the rules listed
    if declared.name != rule:  # an alias: the rule's space, under the name its studies use
        space = _ALIAS_SPACES.setdefault(rule, derive_space(declared, rule))
    else:
        if rule not in SPACES:  # a rule registered after the registry was first read
            SPACES.register(rule, derive_space(declared))
        space = SPACES.get(rule)
    return space.with_param(LEARNING_RATE) if tune_lr else space


def check_values(space: SearchSpace) -> None:
    """Refuse bounds and fixed values the rule or the trainer would refuse: a negative
    coefficient in a linear range fails here, before a sweep writes anything."""
    from catalogue.training import TrainConfig, coerce_option
    from spaces.space import SpaceError

    rule = rule_declaration(space.rule)
    values = [(n, v, "--space") for n, p in space.params.items()
              for v in (p.choices if isinstance(p, Choice) else (p.low, p.high))]
    values += [(n, v, "--fix") for n, v in space.fixed.items()]
    for name, value, flag in values:
        try:
            if name in rule.metaparameters:
                rule.bind(**{name: value})
            else:
                TrainConfig(rule=space.rule, arch=_an_architecture(rule),
                            **{name: coerce_option(name, value)}).validate()
        except ValueError as exc:
            shown = value if isinstance(value, str) else format(value, "g")
            raise SpaceError(f"{flag} {name}: {shown} is out of range ({exc})") from None
    held = space.fixed.get("noise_distribution", DEFAULT_NOISE)
    if not rule.uses_noise and ("noise_distribution" in space.params or held != DEFAULT_NOISE):
        raise SpaceError(f"noise_distribution: {space.rule}'s regularizer draws no input "
                         "noise, so it would change nothing")


def _an_architecture(rule: Rule) -> str:
    """An architecture the rule's mechanism trains, so that a training option's value is
    judged on its own and not refused for the default model (the MLP) an RNN-only rule
    cannot train."""
    from catalogue.architectures import architecture, list_architectures

    families = rule.declared_mechanism.families
    return next(a for a in list_architectures()
                if not families or architecture(a).family in families)


def for_architectures(space: SearchSpace, archs: list[str],
                      model_options: Mapping[str, object] | None = None) -> SearchSpace:
    """The space without the choices the rule's mechanism refuses on any of ``archs``
    (``MechanismDeclaration.option_families``: predictive coding's strict predictions on a
    ResNet) or that the ``model_options`` decide (``held_by_model``: ModProp's cell types
    under Dale's law), so that a sweep does not spend trials the trainer would record as
    invalid; a choice left with one value is held fixed. A value the user fixed is left for
    the configuration's check to refuse, in one line."""
    from catalogue.architectures import architecture

    families = {architecture(arch).family for arch in archs}
    mechanism = rule_declaration(space.rule).declared_mechanism
    for model_option, option, value, _ in mechanism.held_by_model:
        if (model_options or {}).get(model_option) and option in space.params:
            space = space.with_fixed(option, value)
    for option, value, allowed, _ in mechanism.option_families:
        dimension = space.params.get(option)
        if not isinstance(dimension, Choice) or families <= set(allowed):
            continue
        kept = tuple(c for c in dimension.choices if c != value)
        space = (space.with_param(Choice(option, kept)) if len(kept) > 1
                 else space.with_fixed(option, kept[0]))
    return space
