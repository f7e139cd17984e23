from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="symmetric_alignment",
    summary="Kunin et al. 2020: decay + self, fixed point B = (beta/2alpha) W (non-local).",
    terms={"decay": "alpha", "self": "beta"},
    defaults={"alpha": 1e-3, "beta": 2e-3},
    local=False, learns_feedback=True,
))
