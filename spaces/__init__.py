"""Declarative search spaces, one per rule: the single source for Ray Tune, hyperopt, Optuna."""

from spaces.overrides import apply_overrides, load_space_file, parse_range
from spaces.registry import default_space, list_spaces, register_space
from spaces.space import Param, SearchSpace, SpaceError

__all__ = ["Param", "SearchSpace", "SpaceError", "apply_overrides", "default_space",
           "list_spaces", "load_space_file", "parse_range", "register_space"]
