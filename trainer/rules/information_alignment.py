from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="information_alignment",
    summary="Kunin et al. 2020: amp + null + decay on white-noise inputs (local).",
    terms={"amp": "alpha", "null": "beta", "decay": "gamma"},
    defaults={"alpha": 2e-3, "beta": 1e-3, "gamma": 1e-3, "sigma": 1.0},
    regularizer_input="noise", local=True, learns_feedback=True,
))
