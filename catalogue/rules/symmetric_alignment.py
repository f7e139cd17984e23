from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="symmetric_alignment",
    summary="decay + self; fixed point B = (beta / 2 alpha) W.",
    reference="Kunin et al. 2020, Two Routes to Scalable Credit Assignment without Weight "
              "Symmetry (ICML)",
    mechanism="learned", terms={"decay": "alpha", "self": "beta"},
    defaults={"alpha": 1e-3, "beta": 2e-3}, local=False,
))
