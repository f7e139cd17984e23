from catalogue.rule import Rule
from trainer.mechanisms import Mechanism, register_behaviour


class Learned(Mechanism):
    """B is a trained parameter: the rule's regularizer (trainer.alignment) and, for
    Kolen-Pollack, W's gradient train it; B's planner applies."""

    name = "learned"

    def feedback_gets_weight_grad(self, rule: Rule) -> bool:
        return rule.receives_task_gradient


register_behaviour(Learned())
