from catalogue.rule import Rule, register_rule
from catalogue.rules.frsf import SIGN_SCALE, SIGN_REFERENCE

register_rule(Rule(
    name="brsf",
    summary="Batchwise random-magnitude sign-concordant feedback: B = c * |R| * sign(W), R "
            "drawn afresh at B0's scale for every training step, c per layer by the option "
            "scale (default: ||B|| = ||W|| at every step).",
    reference=SIGN_REFERENCE, mechanism="sign", sign_magnitude="redrawn", local=False,
    options=(SIGN_SCALE,),
))
