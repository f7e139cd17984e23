from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="fixed", summary="a random B drawn at W's scale that never changes"))
