from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="sign_symmetry",
    summary="Liao et al. 2016: B = |B0| * sign(W), following W's signs as it changes.",
    local=False, sign_feedback=True,
))
