from trainer.rules.base import Rule, register_rule

register_rule(Rule(
    name="activation_alignment",
    summary="Kunin et al. 2020: sparse + amp on the real layer input (non-local).",
    terms={"sparse": "alpha", "amp": "beta"},
    defaults={"alpha": 1e-3, "beta": 2e-3},
    regularizer_input="activation", local=False, learns_feedback=True,
))
