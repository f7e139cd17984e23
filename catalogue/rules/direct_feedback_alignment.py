from catalogue.rule import Rule, RuleOption, register_rule

# The variants of Han, Park, Ryu & Yoo 2020 (arXiv:2006.12830) are options of the one rule,
# defined in docs/design.md ("Direct feedback alignment"); their defaults are plain DFA.
register_rule(Rule(
    name="direct_feedback_alignment",
    summary="The output error reaches every layer's input through a fixed random matrix of "
            "that layer's own (classes x input shape), not through the layers after it; D's "
            "norm calibrated to backprop's at the first step. Han et al.'s variants (modules, "
            "DFA within them, sparse and dilated feedback, hybrid with backprop) are options "
            "(creditsweep rules direct_feedback_alignment).",
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
                   help="a factor on every D: on the unit draw, or on the calibrated norm"),
        RuleOption("feedback_sparsity", "float", 0.0, low=0.0, high=0.99,
                   help="the fraction of every D's entries fixed at zero (a random mask drawn "
                        "with D), the rest scaled by 1/sqrt(1 - sparsity) to keep the "
                        "delivered error's norm"),
        # searched over 0..4 and 0..2 (every split of a CIFAR ResNet's 4 units but three, of
        # LeNet's 5 but one); larger counts are for the deeper MLPs, set by hand
        RuleOption("modules", "int", 0, low=0, high=8, search=(0, 4),
                   help="K > 0: the model's units (weight layers; a ResNet's stem with its "
                        "first stage, each later stage, the head) in K contiguous modules; "
                        "each module's output receives e @ D (1: backprop); 0: every layer's "
                        "input receives e @ D (plain DFA), or with hybrid, one module per "
                        "unit beside hybrid's"),
        RuleOption("within", "categorical", "backprop", choices=("backprop", "direct"),
                   help="with modules or hybrid: inside each module (but hybrid's) the error "
                        "travels through W (backprop), or each layer's input receives the "
                        "module's own error (the one its output received) through a fixed "
                        "random matrix of its own (direct: DFA within the module; modules=1 "
                        "is plain DFA)"),
        RuleOption("feedback_dilation", "int", 0, low=0, high=8,
                   help="with within=direct, d > 0: where a module's error is a map and the "
                        "layer's input too, the matrix is a 3x3 kernel of dilation d, applied "
                        "as a transposed convolution and resampled to the input's size "
                        "(nearest); 0: a dense matrix"),
        RuleOption("feedback_groups", "int", 1, low=1, high=64, log=True,
                   help="the dilated kernel's groups (the largest common divisor of this and "
                        "both channel counts)"),
        RuleOption("hybrid", "int", 0, low=0, high=8, search=(0, 2),
                   help="N > 0: N units train by backprop inside one module, on the side "
                        "hybrid_side names; the other units form the modules (modules=0: one "
                        "per unit, i.e. DFA beside backprop); 0: off"),
        RuleOption("hybrid_side", "categorical", "top", choices=("top", "bottom"),
                   help="hybrid's backprop units: the top N (under the true output error) "
                        "or the bottom N (under e @ D at their output, DFA above: "
                        "convolutions by backprop, the fully connected layers by DFA)"),
    ),
))
