from catalogue.rule import Rule, RuleOption, register_rule

register_rule(Rule(
    name="truncated_bptt",
    summary="BPTT whose error flows back at most k steps (window form: the rate RNN's state "
            "is detached every k steps, counted back from the last, so a last-step loss "
            "reaches the last k steps; k >= T is BPTT). Rate RNN only.",
    reference="Williams & Peng 1990, An efficient gradient-based algorithm for on-line "
              "training of recurrent network trajectories (Neural Computation 2(4))",
    mechanism="truncated", local=False,
    options=(
        RuleOption("truncation", "int", 10, low=1, high=100, log=True,
                   help="k: the steps an error flows back through (the window's length)"),
    ),
))
