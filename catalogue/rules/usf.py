from catalogue.rule import Rule, register_rule
from catalogue.rules.frsf import SIGN_SCALE, SIGN_REFERENCE

register_rule(Rule(
    name="usf",
    summary="Uniform sign-concordant feedback: B = c * s * sign(W), one magnitude s per "
            "layer (the mean of |B0|), c per layer by the option scale (default: ||B|| = "
            "||W|| at every step).",
    reference=SIGN_REFERENCE, mechanism="sign", sign_magnitude="uniform", local=False,
    options=(SIGN_SCALE,),
))
