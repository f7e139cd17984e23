from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="relaxation",
    summary="the hidden activations relax to the error (activation relaxation): each node "
            "moves towards its upper node's message through W or B; W's update uses the "
            "relaxed nodes and the frozen feedforward activations",
    update="model", transported=(("backward", "learned"),),
    families=("mlp", "lenet"),
    families_why="its sweep runs block by block down a sequential model; the ResNets' skip "
                 "connections wait for the graph version"))
