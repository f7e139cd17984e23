from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="direct_feedback_alignment",
    summary="The output error reaches every layer's input through a fixed random matrix of "
            "that layer's own (classes x input shape), not through the layers after it.",
    reference="Nøkland 2016, Direct feedback alignment provides learning in deep neural "
              "networks (NeurIPS); Han & Yoo 2019 and Han et al. 2020 for CNNs and RNNs",
    mechanism="direct", local=True,
))
