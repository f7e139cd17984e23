from catalogue.rule import Rule, RuleOption, register_rule

register_rule(Rule(
    name="e_prop",
    summary="e-prop: each synapse's eligibility trace (its postsynaptic leak path through "
            "time, f'(v_t) times the filtered presynaptic input) times a learning signal, the "
            "readout's error through W_out^T or a fixed random B; trained as BPTT with "
            "z_{t-1} detached in the recurrent input, the readout by its own gradient. Rate "
            "RNN only.",
    reference="Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass 2020, A solution "
              "to the learning dilemma for recurrent networks of spiking neurons (Nat. "
              "Commun. 11)",
    mechanism="eligibility", local=True,
    options=(
        RuleOption("feedback", "categorical", "symmetric", choices=("symmetric", "random"),
                   help="the learning signal's path from the readout: W_out^T (symmetric) or "
                        "a fixed random B drawn at W_out's scale (random)"),
    ),
))
