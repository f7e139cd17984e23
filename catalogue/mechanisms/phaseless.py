from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="phaseless",
    summary="B learns during ordinary training from Ornstein-Uhlenbeck noise at each hidden "
            "weight layer's input, correlated with the layer's high-passed output "
            "(phaseless alignment: weight mirroring without a separate phase); the rule's "
            "decay term bounds it",
    learns_feedback=True, has_regularizer=True, paced=False))
