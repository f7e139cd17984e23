"""Declarative search spaces, one per rule, derived from the rule catalogue: the single source
for Ray Tune, hyperopt and Optuna. No torch, no Ray."""

from spaces.overrides import apply_overrides, load_space_file, parse_range
from spaces.registry import (SPACES, check_values, default_space, derive_space, list_spaces,
                             register_space)
from spaces.space import Choice, Param, SearchSpace, SpaceError

__all__ = ["Choice", "Param", "SPACES", "SearchSpace", "SpaceError", "apply_overrides", "check_values",
           "default_space", "derive_space", "list_spaces", "load_space_file", "parse_range",
           "register_space"]
