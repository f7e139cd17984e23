from catalogue.rule import Rule, RuleOption, register_rule

register_rule(Rule(
    name="modprop",
    summary="ModProp on the rate RNN: e-prop's exact local credit plus the recurrent credit "
            "back in time through the cell-type means W_ab of W, with f' replaced by mu, "
            "delta_t = f'(v_t) W_out^T e_t + d delta_{t+1} + mu (1-d) W_ab^T delta_{t+1}; "
            "computed by this backward recursion, equivalent to its online form (mu=0: "
            "e-prop).",
    reference="Liu, Smith, Mihalas, Shea-Brown & Sümbül 2022, Biologically-plausible "
              "backpropagation through arbitrary timespans via local neuromodulators "
              "(NeurIPS)",
    # It carries the output error back through W_out^T and the recurrent credit through
    # block means of W: weight transport at the cell-type level.
    mechanism="modprop", local=False,
    # mu = 0.25 and two cell types (E and I) with no window are the reference code's defaults.
    options=(
        RuleOption("mu", "float", 0.25, low=0.0, high=1.0,
                   help="the constant standing for f' on the recurrent credit path (0: "
                        "e-prop)"),
        # Up to the smallest RNN's units (rnn32), so that no sampled value exceeds them.
        RuleOption("cell_types", "int", 2, low=1, high=32, log=True,
                   help="cell types C: contiguous blocks of units whose block means of W form "
                        "W_ab; an RNN with Dale's law declares its own 2 (I, E)"),
        RuleOption("window", "int", 0, low=0, high=1000,
                   help="recurrent credit only into the last steps of this many (0: every "
                        "step; earlier steps e-prop)"),
    ),
))
