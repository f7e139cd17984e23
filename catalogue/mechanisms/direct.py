from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="direct", summary="the output error reaches each layer through a fixed random matrix "
                           "of its own (classes x input shape)",
    unit_options=("modules", "hybrid")))
