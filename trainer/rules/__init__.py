"""Rule registry. Each sibling module declares one rule; importing this package registers all."""

from trainer.rules import (  # noqa: F401  (imported for their registrations)
    activation_alignment,
    backprop,
    feedback_alignment,
    information_alignment,
    kolen_pollack,
    sign_symmetry,
    symmetric_alignment,
    weight_mirror,
)
from trainer.rules.base import (
    ConfiguredRule,
    Rule,
    get_rule,
    list_rules,
    register_rule,
    rule_declaration,
)

__all__ = ["ConfiguredRule", "Rule", "get_rule", "list_rules", "register_rule",
           "rule_declaration"]
