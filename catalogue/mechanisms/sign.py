from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="sign", summary="B = magnitude * sign(W), following W's signs as W changes (the "
                         "rule's sign_magnitude says which magnitude)"))
