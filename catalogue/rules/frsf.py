from catalogue.rule import Rule, RuleOption, register_rule

SIGN_REFERENCE = ("Liao, Leibo & Poggio 2016, How important is weight symmetry in "
                  "backpropagation? (AAAI)")

# B's norm per layer. W grows several-fold in a few epochs while a B held at B0's norm does not,
# so the error reaching the lower layers shrinks by the product of the ratios above them.
SIGN_NORM = RuleOption(
    "norm", "categorical", "initial", choices=("initial", "weight"),
    help="B's Frobenius norm per layer: B0's throughout (initial), or W's at every step "
         "(weight: B rescaled by ||W|| / ||B||)")

# Once called sign_symmetry: the alias keeps studies under that name readable and runnable.
register_rule(Rule(
    name="frsf",
    summary="Fixed random-magnitude sign-concordant feedback: B = |B0| * sign(W), |B0| drawn "
            "once, signs following W as it changes.",
    reference=SIGN_REFERENCE, mechanism="sign", sign_magnitude="fixed", local=False,
    options=(SIGN_NORM,),
), aliases=("sign_symmetry",))
