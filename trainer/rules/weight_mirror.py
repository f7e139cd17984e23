from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="weight_mirror",
    summary="Akrout et al. 2019: decay + amp on white-noise inputs (local).",
    terms={"decay": "alpha", "amp": "beta"},
    defaults={"alpha": 1e-3, "beta": 1e-3, "sigma": 1.0},
    regularizer_input="noise", local=True, learns_feedback=True,
))
