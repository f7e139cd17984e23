from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="eligibility",
    summary="each synapse's eligibility trace (its own leak path through time) times a "
            "learning signal from the readout's error, through W_out^T or a fixed random B",
    families=("rnn",),
    families_why="eligibility traces follow the rate RNN's leaky state through time; a "
                 "feedforward model has no recurrent state to trace"))
