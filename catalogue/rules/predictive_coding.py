from catalogue.rule import Rule, RuleOption, register_rule

register_rule(Rule(
    name="predictive_coding",
    summary="Value nodes mu_l settle for T steps, mu_l <- mu_l - eta*(eps_l - J_{l+1}^T "
            "eps_{l+1}), under the prediction errors eps_l = mu_l - mu_hat_l, the output error "
            "being -dL/dy; W's update uses the settled errors, which are -dL/dx_l with fixed "
            "predictions (on the model's graph: every family; strict predictions and learned "
            "error weights on the MLP and LeNet).",
    reference="Whittington & Bogacz 2017, An approximation of the error backpropagation "
              "algorithm in a predictive coding network with local Hebbian synaptic plasticity; "
              "Millidge, Tschantz & Buckley 2022, Predictive coding approximates backprop along "
              "arbitrary computation graphs; Millidge, Tschantz, Seth & Buckley 2020, Relaxing "
              "the Constraints on Predictive Coding Models (arXiv:2010.01047)",
    mechanism="predictive_coding", local=True,
    # T = 100 and eta = 0.1 are PredictiveCodingBackprop's defaults; they integrate the same
    # time, eta * T = 10, as RelaxedPredictiveCoding's 500 steps of 2 x 0.01 (its energy has
    # no 1/2), at a fifth of the sweeps.
    options=(
        RuleOption("inference_steps", "int", 100, low=1, high=1000, log=True,
                   help="inference steps T"),
        RuleOption("inference_lr", "float", 0.1, low=0.01, high=1.0, log=True,
                   help="inference rate eta"),
        RuleOption("prediction", "categorical", "fixed", choices=("fixed", "strict"),
                   help="predictions frozen at the forward pass (fixed) or recomputed from "
                        "the value nodes at every step (strict: the MLP and LeNet)"),
        RuleOption("backward", "categorical", "exact", choices=("exact", "learned", "random"),
                   help="the backward weights: W, B learned by dB = dW^T, or a fixed random B"),
        RuleOption("derivatives", "categorical", "on", choices=("on", "off"),
                   help="f' in the errors' backward message (on) or dropped (off); W's "
                        "update keeps it"),
        RuleOption("error_weights", "categorical", "identity", choices=("identity", "learned"),
                   help="each error node compares its value with the prediction (identity) "
                        "or with the prediction through learned error weights V (the MLP and "
                        "LeNet)"),
        RuleOption("error_weights_lr", "float", 0.025, low=1e-4, high=1.0, log=True,
                   help="with error_weights=learned: V's rate in dV = -rate * mu_hat^T eps"),
    ),
))
