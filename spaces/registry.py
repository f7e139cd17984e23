"""One default search space per rule, registered by name.

Coefficients span 1e-6..10 on a log scale: the official defaults (1e-3..2e-3) sit in the middle
and the top decades are where rules diverge, which the service exists to find. The input-noise
sigma spans 1e-2..10. Every space may also tune the learning rate (``lr``), off by default.
"""

from __future__ import annotations

from spaces.space import Param, SearchSpace, SpaceError

COEFFICIENT = (1e-6, 10.0)
NOISE = (1e-2, 10.0)
LEARNING_RATE = Param("lr", 1e-3, 1.0)
TRAINING_KNOBS = ("lr",)

_SPACES: dict[str, SearchSpace] = {}


def register_space(rule: str, coefficients: tuple[str, ...] = (), noise: bool = False) -> None:
    params = {name: Param(name, *COEFFICIENT) for name in coefficients}
    if noise:
        params["sigma"] = Param("sigma", *NOISE)
    known = tuple(params) + TRAINING_KNOBS
    _SPACES[rule] = SearchSpace(rule, params, known=known)


register_space("backprop")
register_space("feedback_alignment")
register_space("sign_symmetry")
register_space("kolen_pollack", ("alpha",))
register_space("weight_mirror", ("alpha", "beta"), noise=True)
register_space("information_alignment", ("alpha", "beta", "gamma"), noise=True)
register_space("symmetric_alignment", ("alpha", "beta"))
register_space("activation_alignment", ("alpha", "beta"))


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def default_space(rule: str, tune_lr: bool = False) -> SearchSpace:
    try:
        space = _SPACES[rule]
    except KeyError:
        raise SpaceError(f"unknown rule {rule!r}; valid rules: {', '.join(list_spaces())}") \
            from None
    return space.with_param(LEARNING_RATE) if tune_lr else space
