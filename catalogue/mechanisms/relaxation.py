from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="relaxation",
    summary="the hidden activations relax to the error (activation relaxation): each node "
            "(a weight layer's input) moves towards the messages of the nodes above it, "
            "through W or B and the model's graph; W's update uses the relaxed nodes and the "
            "frozen feedforward activations",
    update="model", transported=(("backward", "learned"),)))
