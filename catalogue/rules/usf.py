from catalogue.rule import Rule, register_rule
from catalogue.rules.frsf import SIGN_SCALE, SIGN_REFERENCE

register_rule(Rule(
    name="usf",
    summary="Uniform sign-concordant feedback: B = s * sign(W), one magnitude s per layer "
            "(the mean of |B0|, so the error's scale matches frSF's).",
    reference=SIGN_REFERENCE, mechanism="sign", sign_magnitude="uniform", local=False,
    options=(SIGN_SCALE,),
))
