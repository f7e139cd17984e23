from catalogue.mechanism import MechanismDeclaration, register_mechanism

# B is not learned (Podlaski & Machens 2020 rely on the dynamics, not a second learning
# problem, for the inversion); it is only moved when it must be, to keep the inversion stable.
register_mechanism(MechanismDeclaration(
    name="dynamic_inversion",
    summary="a fixed feedback B (-W^T or random) closes a loop around each layer whose "
            "steady state inverts W; the hidden error is f' times that steady state. B is "
            "moved only to keep the loop stable (smoothed spectral abscissa descent)",
    update="model", families=("mlp",),
    families_why="the inversion loop runs layer by layer on dense layers (Podlaski & Machens "
                 "2020 study MLPs); convolutions and skip connections have no inversion "
                 "here"))
