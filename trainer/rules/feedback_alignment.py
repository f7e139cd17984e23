from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="feedback_alignment",
    summary="Lillicrap et al. 2016: a fixed random B carries the error.",
    local=True,
))
