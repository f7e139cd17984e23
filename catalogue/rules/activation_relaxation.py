from catalogue.rule import Rule, RuleOption, register_rule

register_rule(Rule(
    name="activation_relaxation",
    summary="The hidden activations relax for T steps, x_l <- x_l - eta*(x_l - J_{l+1}^T "
            "x_{l+1}), from their feedforward values to dL/dx_l; W's update uses the relaxed "
            "x* and the frozen feedforward activations (any model: skip connections and "
            "BatchNorm as a computation graph).",
    reference="Millidge, Tschantz, Seth & Buckley 2020, Activation Relaxation: a local "
              "dynamical approximation to backpropagation in the brain (arXiv:2009.05359)",
    mechanism="relaxation", local=True,
    options=(
        RuleOption("inference_steps", "int", 100, low=1, high=1000, log=True,
                   help="relaxation steps T"),
        RuleOption("inference_lr", "float", 0.1, low=0.01, high=1.0, log=True,
                   help="relaxation rate eta"),
        RuleOption("backward", "categorical", "exact", choices=("exact", "learned", "random"),
                   help="the backward weights: W, B learned by dB = dW^T, or a fixed random B"),
        RuleOption("derivatives", "categorical", "on", choices=("on", "off"),
                   help="f' in the relaxation's backward message (on) or dropped (off)"),
    ),
))
