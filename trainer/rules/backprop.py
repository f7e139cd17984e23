from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="backprop",
    summary="Reference: B is W (layers stay plain), exact gradients.",
    local=False, tied=True,
))
