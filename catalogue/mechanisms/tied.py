from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="tied", summary="B is W: the layers stay plain and autograd gives exact gradients."))
