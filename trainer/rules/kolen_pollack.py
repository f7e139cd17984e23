from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="kolen_pollack",
    summary="Kolen & Pollack 1994: B receives W's gradient plus alpha-weighted decay.",
    terms={"decay": "alpha"}, defaults={"alpha": 1e-3},
    local=False, learns_feedback=True, receives_task_gradient=True,
))
