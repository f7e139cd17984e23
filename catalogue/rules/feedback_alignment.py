from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="feedback_alignment",
    summary="A fixed random B carries the error; W learns to align with it.",
    reference="Lillicrap, Cownden, Tweed & Akerman 2016, Random synaptic feedback weights "
              "support error backpropagation for deep learning (Nat. Commun.)",
    mechanism="fixed", local=True,
))
