from catalogue.rule import Rule, RuleOption, register_rule

# The variants of Han, Park, Ryu & Yoo 2020 (arXiv:2006.12830) are options of the one rule,
# defined in docs/design.md ("Direct feedback alignment"); their defaults are plain DFA.
register_rule(Rule(
    name="direct_feedback_alignment",
    summary="The output error reaches every layer's input through a fixed random matrix of "
            "that layer's own (classes x input shape), not through the layers after it.",
    reference="Nøkland 2016, Direct feedback alignment provides learning in deep neural "
              "networks (NeurIPS); Han & Yoo 2019 and Han et al. 2020 for CNNs and RNNs",
    mechanism="direct", local=True,
    options=(
        RuleOption("feedback_init", "categorical", "calibrated", choices=("unit", "calibrated"),
                   help="D's norm: unit (N(0, 1/n): the delivered error has the output "
                        "error's norm) or calibrated (D rescaled once, at its first training "
                        "backward, to deliver the norm backprop carries there from the error "
                        "above it; measured stable at backprop's rates on LeNet)"),
        RuleOption("feedback_scale", "float", 1.0, low=0.01, high=100.0, log=True,
                   help="a factor on every D after its init"),
    ),
))
