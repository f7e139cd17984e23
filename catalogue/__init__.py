"""creditsweep's catalogue: what every layer reads, without torch or Ray.

The rules (one module each in ``catalogue/rules/``), the architectures, the training options,
the registry type and the errors. The trainer builds on it, the search spaces are derived from
it, and the command line answers listings and ``--help`` from it alone.
"""

from catalogue.architectures import (Architecture, architecture, list_architectures,
                                     register_architecture)
from catalogue.errors import StorageUnavailable, UnknownName, UsageError
from catalogue.primitives import PRIMITIVES, Primitive
from catalogue.registry import Registry
from catalogue.mechanism import MechanismDeclaration, list_mechanisms, register_mechanism
from catalogue.rule import (ConfiguredRule, Rule, RuleOption, get_rule, list_rules,
                            register_rule, rule_declaration)
from catalogue.training import TrainConfig, tunable_options

__all__ = [
    "Architecture", "ConfiguredRule", "MechanismDeclaration", "PRIMITIVES", "Primitive",
    "Registry", "Rule", "RuleOption", "list_mechanisms", "register_mechanism",
    "StorageUnavailable", "TrainConfig", "UnknownName", "UsageError", "architecture",
    "get_rule", "list_architectures", "list_rules", "register_architecture", "register_rule",
    "rule_declaration", "tunable_options",
]
