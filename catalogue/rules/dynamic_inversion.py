from catalogue.rule import Rule, RuleOption, register_rule

register_rule(Rule(
    name="dynamic_inversion",
    summary="Each layer's error is inverted through its forward weights by a feedback loop, "
            "r_up' = -alpha r_up + W r - delta_up, r' = -r + B r_up, run to its steady state "
            "B(WB - alpha I)^-1 delta_up (W's pseudo-inverse for B = -W^T, alpha = 0); "
            "delta = f' * r, layer by layer down the MLP (MLPs only, as in the paper).",
    reference="Podlaski & Machens 2020, Biological credit assignment through dynamic "
              "inversion of feedforward networks (NeurIPS 2020, arXiv:2007.05112)",
    mechanism="dynamic_inversion", local=True,
    options=(
        RuleOption("inference_steps", "int", 100, low=1, high=4000, log=True,
                   help="Euler steps T of the inversion (solver=dynamic)"),
        RuleOption("dt", "float", 0.5, low=0.01, high=1.0, log=True,
                   help="largest Euler time step of the inversion (solver=dynamic): each "
                        "layer takes the step up to dt whose Euler iteration contracts "
                        "fastest, smaller than dt when its loop is too stiff (the epoch's "
                        "inversion_dt: the smallest taken)"),
        # Linear, not log: the paper's leaks include 0 (the exact pseudo-inverse), which a
        # log range cannot hold; a linear range from 0 to 0.2 samples 0.01-0.1 as often as
        # anything else in it.
        RuleOption("alpha", "float", 0.1, low=0.0, high=0.2,
                   help="leak alpha of the upper units: 0 inverts exactly (W's "
                        "pseudo-inverse for B = -W^T), more regularises the inversion"),
        RuleOption("solver", "categorical", "dynamic", choices=("dynamic", "steady"),
                   help="simulate the loop (dynamic) or solve its steady state by least "
                        "squares (steady: the paper's non-dynamic inversion, NDI)"),
        RuleOption("backward", "categorical", "transpose", choices=("transpose", "random"),
                   help="B's start: -W^T, or an independent draw at W's scale"),
        RuleOption("stabilize", "categorical", "ssa", choices=("ssa", "off"),
                   help="when a layer's loop is unstable: descend B on the smoothed "
                        "spectral abscissa (ssa, as the paper) or fail the trial (off)"),
    ),
))
