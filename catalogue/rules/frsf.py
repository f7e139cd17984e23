from catalogue.rule import Rule, RuleOption, register_rule

SIGN_REFERENCE = ("Liao, Leibo & Poggio 2016, How important is weight symmetry in "
                  "backpropagation? (AAAI)")

# B's scale per layer. W grows several-fold within a few epochs while a B held at B0's scale
# does not, so the error reaching the lower layers shrinks by the product of the ratios above.
SIGN_SCALE = RuleOption(
    "scale", "categorical", "norm", choices=("initial", "norm", "fit"),
    help="B's scale per layer, B = c * magnitude * sign(W): c = 1, B0's scale throughout "
         "(initial); ||B|| = ||W|| at every step (norm); or c = <W, B'> / ||B'||^2 with "
         "B' = magnitude * sign(W): B is W's projection onto B', the multiple of B' closest "
         "to W (fit)")

# Once called sign_symmetry: the alias keeps studies under that name readable and runnable.
register_rule(Rule(
    name="frsf",
    summary="Fixed random-magnitude sign-concordant feedback: B = c * |B0| * sign(W), |B0| "
            "drawn once, signs following W as it changes, c per layer by the option scale "
            "(default: ||B|| = ||W|| at every step).",
    reference=SIGN_REFERENCE, mechanism="sign", sign_magnitude="fixed", local=False,
    options=(SIGN_SCALE,),
), aliases=("sign_symmetry",))
