from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="sign_symmetry",
    summary="B = |B0| * sign(W): fixed random magnitudes that follow W's signs as it changes.",
    reference="Liao, Leibo & Poggio 2016, How important is weight symmetry in "
              "backpropagation? (AAAI)",
    feedback="sign", local=False,
))
