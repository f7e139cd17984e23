from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="activation_alignment",
    summary="sparse + amp on the real layer input; fixed point (beta / 2 alpha) W on its span.",
    reference="Kunin et al. 2020, Two Routes to Scalable Credit Assignment without Weight "
              "Symmetry (ICML)",
    mechanism="learned", terms={"sparse": "alpha", "amp": "beta"},
    defaults={"alpha": 1e-3, "beta": 2e-3},
    regularizer_input="activation", local=False,
))
