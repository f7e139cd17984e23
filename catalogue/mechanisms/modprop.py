from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="modprop",
    summary="the output error reaches the hidden units through W_out^T; the recurrent credit "
            "back in time goes through W_ab, the cell-type block means of W, with a constant "
            "mu for f' (cell-type-specific neuromodulators through fixed filter taps); "
            "nothing is learned besides W",
    update="model", families=("rnn",),
    families_why="its credit runs over the rate RNN's time steps, leak and cell types",
    held_by_model=(("excitatory", "cell_types", 2,
                    "an RNN under Dale's law declares its two cell types, I and E"),)))
