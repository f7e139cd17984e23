from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="truncated",
    summary="B is W, but the recurrent state is detached every k steps (counted back from "
            "the last): the error flows back through at most k steps",
    families=("rnn",),
    families_why="truncation cuts the error's path back through the rate RNN's time steps; "
                 "a feedforward model has no steps to cut"))
