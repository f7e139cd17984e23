from catalogue.rule import Rule, register_rule

SIGN_REFERENCE = ("Liao, Leibo & Poggio 2016, How important is weight symmetry in "
                  "backpropagation? (AAAI)")

# Once called sign_symmetry: the alias keeps studies under that name readable and runnable.
register_rule(Rule(
    name="frsf",
    summary="Fixed random-magnitude sign-concordant feedback: B = |B0| * sign(W), |B0| drawn "
            "once, signs following W as it changes.",
    reference=SIGN_REFERENCE, mechanism="sign", sign_magnitude="fixed", local=False,
), aliases=("sign_symmetry",))
