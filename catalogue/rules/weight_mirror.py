from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="weight_mirror",
    summary="decay + amp on white-noise inputs; fixed point B = (beta sigma^2 P / 2 alpha) W.",
    reference="Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, Deep learning without "
              "weight transport (NeurIPS)",
    mechanism="learned", terms={"decay": "alpha", "amp": "beta"},
    defaults={"alpha": 1e-3, "beta": 1e-3, "sigma": 1.0},
    regularizer_input="noise", local=True,
))
