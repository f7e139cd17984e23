from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="information_alignment",
    summary="amp + null + decay on white-noise inputs; B is a ridge pseudo-inverse of W.",
    reference="Kunin et al. 2020, Two Routes to Scalable Credit Assignment without Weight "
              "Symmetry (ICML)",
    mechanism="learned", terms={"amp": "alpha", "null": "beta", "decay": "gamma"},
    defaults={"alpha": 2e-3, "beta": 1e-3, "gamma": 1e-3, "sigma": 1.0},
    regularizer_input="noise", local=True,
))
