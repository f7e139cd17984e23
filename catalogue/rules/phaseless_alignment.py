from catalogue.rule import Rule, RuleOption, register_rule

# alpha is the decay primitive's weight, as in Kunin et al.'s rules: PAL's -alpha*B in B's
# update is the gradient of the decay term (trainer/mechanisms/phaseless.py gives the noise
# term twice the paper's weight, so that alpha and the fixed point are the paper's). Its range
# runs from where B could not relax within any run we train (lr_B * 2 alpha * steps << 1:
# indistinguishable from 0, which --set takes) to where B* = sigma^2 a/((1+a) alpha) W falls
# below W's scale at the largest sigma; the reference code's 1e-6 and 1e-4 lie inside.
register_rule(Rule(
    name="phaseless_alignment",
    summary="OU noise at each hidden layer's input, correlated with the layer's high-passed "
            "output, trains B during ordinary training (B* = sigma^2 a/((1+a) alpha) W, "
            "a = exp(-1/tau)); W learns through B as in feedback alignment.",
    reference="Max, Kriener, Pineda Garcia, Nowotny, Senn & Petrovici, Learning efficient "
              "backprojections across cortical hierarchies in real time (arXiv:2212.10249)",
    mechanism="phaseless", terms={"decay": "alpha"}, defaults={"alpha": 1e-4},
    local=True, search_ranges={"alpha": (1e-7, 1e-2)},
    options=(
        RuleOption("sigma", "float", 1e-2, low=1e-3, high=0.3, log=True,
                   help="std of the Ornstein-Uhlenbeck noise at each hidden layer's input"),
        RuleOption("tau", "float", 10.0, low=1.0, high=1000.0, log=True,
                   help="the noise's correlation time and the high-pass's time constant, "
                        "in training steps"),
    ),
))
