from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="learned", summary="B is trained by the rule's regularizer (and, for Kolen-Pollack, "
                            "W's gradient)",
    learns_feedback=True, has_regularizer=True))
