"""What a credit-assignment mechanism is, without torch: its declaration and its registry.

A mechanism is how a rule's error reaches the layers: B is W (tied), a fixed random B, a B
following W's signs, a B trained by the rule's regularizer, or a fixed random projection of
the output error (direct). A rule names its mechanism (``Rule.mechanism``) and the name is
checked against ``MECHANISMS`` when the rule is declared. The declaration here says what B is
and whether it learns; the behaviour (how ``convert`` builds B, how the update is formed) is
the trainer's, one module per mechanism in ``trainer/mechanisms/`` under the same name.

Adding a mechanism is adding one module to ``catalogue/mechanisms/`` that calls
``register_mechanism`` and one to ``trainer/mechanisms/`` that registers its behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping

from catalogue.registry import Registry, import_submodules

# How the weight update is formed: by each layer's backward (the custom autograd Function
# carrying the error through B), or by a routine over the whole model run after the forward
# pass. Either way, after the forward pass and loss.backward() every W.grad holds the update.
UpdateKind = Literal["layer", "model"]

# B's plan's verdict for a run whose B no regularizer trains (the planner has nothing to pace),
# stored in studies beside ok, under-relaxed and unstable.
PLAN_NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class MechanismDeclaration:
    name: str
    summary: str  # what B is, one line: listings and help print it
    learns_feedback: bool = False  # B is a trained parameter (optimizer group, planner)
    has_regularizer: bool = False  # rules of this mechanism may weight primitives
    update: UpdateKind = "layer"
    # Whether B's planner paces a B of this mechanism: False where B learns from more than the
    # regularizer the planner measures (a noise correlation), so --feedback-lr-multiplier
    # auto can say it has no effect before the run.
    paced: bool = True
    # Options (name, value) under which B is W's transported copy: a B that receives W's
    # every update, so that starting from B = W it stays W. The robustness study runs such a
    # rule that way, so that the noise on B's updates has a B to perturb (as backprop's
    # transported copy, catalogue.noisy_backprop).
    transported: tuple[tuple[str, str], ...] = ()
    # The architecture families the mechanism trains (empty: any), and why it takes no
    # other; and, per option value, narrower families: (option, value, families, why). Read
    # before anything runs (``refusal``), so that a sweep or a transfer refuses in one line
    # instead of recording every trial as invalid; the trainer's ``check`` stays the judge of
    # the model itself.
    families: tuple[str, ...] = ()
    families_why: str = ""
    option_families: tuple[tuple[str, str, tuple[str, ...], str], ...] = ()
    # Rule options a model option decides: (model option, rule option, value, why). While the
    # model option is set (non-zero), the rule option can only take that value, so a sweep
    # holds it there instead of spending trials the trainer refuses (ModProp's cell types
    # under Dale's law).
    held_by_model: tuple[tuple[str, str, object, str], ...] = ()
    # Int options that count a model's units (Architecture.module_units: DFA's modules and
    # hybrid): together they may not exceed the model's count.
    unit_options: tuple[str, ...] = ()
    # The mechanism's own refusal of option combinations, given the options and the model's
    # unit count (None where undeclared): one line, or None. DFA refuses the settings that are
    # backprop under another name, so a search never reports backprop as DFA's best.
    option_refusal: Callable[[Mapping[str, object], int | None], str | None] | None = None

    def __post_init__(self) -> None:
        if self.update not in ("layer", "model"):
            raise ValueError(f"mechanism {self.name!r}: update must be 'layer' or 'model', "
                             f"got {self.update!r}")
        if self.has_regularizer and not self.learns_feedback:
            raise ValueError(f"mechanism {self.name!r}: a regularizer trains B, so B must "
                             "learn")


    def refusal(self, rule: str, arch: str, family: str, options: Mapping[str, object],
                units: int | None = None) -> str | None:
        """One line saying why ``rule`` under ``options`` cannot train ``arch`` (of
        ``family``, a sequence of ``units`` units where declared), or None when it can."""
        counted = {o: int(options.get(o) or 0) for o in self.unit_options}  # type: ignore
        asked = " + ".join(f"{o}={v}" for o, v in counted.items() if v)
        if units is not None and sum(counted.values()) > units:
            return (f"{rule} with {asked} needs more units than {arch} has: {units} "
                    f"(creditsweep rules {rule})")
        if units is None and asked:
            return f"{rule} with {asked}: {arch} declares no units to group into modules"
        if self.option_refusal is not None:
            why = self.option_refusal(options, units)
            if why is not None:
                return f"{rule} on {arch}: {why}"
        if self.families and family not in self.families:
            return (f"{rule} trains {', '.join(self.families)} models, not {arch}: "
                    f"{self.families_why}")
        for option, value, families, why in self.option_families:
            if options.get(option) == value and family not in families:
                return (f"{rule} with {option}={value} trains {', '.join(families)} models, "
                        f"not {arch}: {why}")
        return None


MECHANISMS: Registry[MechanismDeclaration] = Registry(
    "mechanism", discover=import_submodules("catalogue.mechanisms"))


def register_mechanism(declaration: MechanismDeclaration) -> MechanismDeclaration:
    return MECHANISMS.register(declaration.name, declaration)


def mechanism_declaration(name: str) -> MechanismDeclaration:
    return MECHANISMS.get(name)


def list_mechanisms() -> list[str]:
    return MECHANISMS.names()
