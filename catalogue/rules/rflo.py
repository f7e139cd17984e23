from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="rflo",
    summary="Random-feedback local online learning on the rate RNN: each synapse's trace "
            "p_ji <- d p_ji + (1-d) f'(v_j) z_i (x_k for W_in, 1 for b) and dW_ji = sum_t "
            "(B e_t)_j p_ji,t, with e_t = dL/dy_t and B fixed random; the readout by its own "
            "gradient. Trained on the same sum taken backward in time (equal to the online "
            "traces, tested).",
    reference="Murray 2019, Local online learning in recurrent networks with random feedback "
              "(eLife 8:e43299)",
    mechanism="rflo", local=True,
))
