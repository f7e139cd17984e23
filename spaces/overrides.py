"""Narrowing a default space from the CLI (``--space``, ``--fix``) or a TOML/YAML file.

    --space alpha=1e-5:1e-1:log     --space lr=0.01:0.5:linear     --fix sigma=1.0
    --space noise_distribution=normal,uniform                    --fix noise_distribution=uniform

A file holds the same in two tables::

    [space]                      # TOML; YAML uses the same keys
    alpha = "1e-5:1e-1:log"      # or {low = 1e-5, high = 1e-1, log = true}
    [fix]
    sigma = 1.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from catalogue.rule import RULES, RuleOption
from catalogue.training import choice_options, integer_options
from spaces.registry import check_values
from spaces.space import Choice, Dimension, Fixed, Param, SearchSpace, SpaceError


def _rule_option(rule: str | None, name: str) -> RuleOption | None:
    """The rule's typed option of this name, if the rule declares one."""
    if rule is None or rule not in RULES:
        return None
    return RULES.get(rule).option(name)


def _choices(rule: str | None, name: str) -> tuple[str, ...] | None:
    """The names a categorical training option or rule option takes (None: not one)."""
    option = _rule_option(rule, name)
    if option is not None:
        return option.choices if option.kind == "categorical" else None
    return choice_options().get(name)


def parse_choice(name: str, text: str, rule: str | None = None) -> Choice:
    """``normal,uniform``: the values a categorical option is searched over."""
    valid = _choices(rule, name) or ()
    values = tuple(v.strip() for v in text.split(","))
    unknown = [v for v in values if v not in valid]
    if unknown or not all(values):
        raise SpaceError(f"--space {name}={text!r}: expected a comma-separated list of "
                         f"{', '.join(valid)}")
    return Choice(name, values)


def parse_dimension(name: str, text: str, rule: str | None = None) -> Dimension:
    if _choices(rule, name) is not None:
        return parse_choice(name, text, rule)
    option = _rule_option(rule, name)
    if option is not None:  # a numeric rule option: its kind, and its scale unless given
        return parse_range(name, text, integer=option.kind == "int",
                           scale="log" if option.log else "linear")
    return parse_range(name, text, integer=name in integer_options())


def _fixed_value(flag: str, name: str, raw: Any, rule: str | None = None) -> Fixed:
    valid = _choices(rule, name)
    if valid is not None:
        if raw not in valid:
            raise SpaceError(f"{flag} {name}={raw!r}: must be one of {', '.join(valid)}")
        return str(raw)
    return _number(flag, name, raw)


def parse_range(name: str, text: str, integer: bool = False, scale: str = "log") -> Param:
    """``LOW:HIGH[:log|linear]``; without a scale, ``scale``."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SpaceError(f"--space {name}={text!r}: expected LOW:HIGH[:log|linear]")
    scale = parts[2].strip().lower() if len(parts) == 3 else scale
    if scale not in ("log", "linear"):
        raise SpaceError(f"--space {name}={text!r}: scale must be log or linear, not {scale!r}")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise SpaceError(f"--space {name}={text!r}: bounds must be numbers") from None
    return Param(name, low, high, log=scale == "log", integer=integer)


def _split(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise SpaceError(f"{flag} expects NAME=VALUE, got {item!r}")
    return name.strip(), value.strip()


def _number(flag: str, name: str, raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise SpaceError(f"{flag} {name}={raw!r}: not a number") from None


def _param_from_file(name: str, entry: Any, rule: str | None = None) -> Dimension:
    if _choices(rule, name) is not None and isinstance(entry, list):
        return parse_choice(name, ",".join(map(str, entry)), rule)
    if isinstance(entry, str):
        return parse_dimension(name, entry, rule)
    if isinstance(entry, dict) and {"low", "high"} <= set(entry):
        extra = set(entry) - {"low", "high", "log"}
        if extra:
            raise SpaceError(f"space file: {name} has unknown keys {', '.join(sorted(extra))}")
        return Param(name, _number("space file", name, entry["low"]),
                     _number("space file", name, entry["high"]), bool(entry.get("log", True)),
                     integer=name in integer_options() or (
                         (option := _rule_option(rule, name)) is not None
                         and option.kind == "int"))
    raise SpaceError(f"space file: {name} must be 'LOW:HIGH[:log]' or a table with low/high")


def load_space_file(path: str, rule: str | None = None
                    ) -> tuple[dict[str, Dimension], dict[str, Fixed]]:
    file = Path(path)
    if not file.is_file():
        raise SpaceError(f"space file {path} does not exist")
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(file.read_text())
        elif file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(file.read_text()) or {}
        else:
            raise SpaceError(f"space file {path}: use a .toml, .yaml or .yml file")
    except SpaceError:
        raise
    except Exception as exc:  # parse errors of either format
        raise SpaceError(f"space file {path} is malformed: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if not isinstance(data, dict) or set(data) - {"space", "fix"}:
        raise SpaceError(f"space file {path}: only the tables 'space' and 'fix' are allowed")
    params = {n: _param_from_file(n, e, rule) for n, e in (data.get("space") or {}).items()}
    fixed = {n: _fixed_value("space file", n, v, rule)
             for n, v in (data.get("fix") or {}).items()}
    return params, fixed


def apply_overrides(space: SearchSpace, ranges: Iterable[str] = (), fixes: Iterable[str] = (),
                    file: str | None = None) -> SearchSpace:
    """The default space narrowed by a file first, then by the flags (flags win); every bound
    and fixed value must be one the rule or the trainer accepts."""
    params: dict[str, Dimension] = {}
    fixed: dict[str, Fixed] = {}
    if file:
        params, fixed = load_space_file(file, space.rule)
    for item in ranges:
        name, text = _split(item, "--space")
        params[name] = parse_dimension(name, text, space.rule)
        fixed.pop(name, None)
    for item in fixes:
        name, text = _split(item, "--fix")
        fixed[name] = _fixed_value("--fix", name, text, space.rule)
        params.pop(name, None)
    for name in list(params) + list(fixed):
        if name not in space.known:
            raise SpaceError(f"unknown parameter {name!r} for rule {space.rule!r}; valid: "
                             f"{', '.join(space.known)}")
    for param in params.values():
        space = space.with_param(param)
    for name, value in fixed.items():
        space = space.with_fixed(name, value)
    check_values(space)
    return space
