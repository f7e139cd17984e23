from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="predictive_coding",
    summary="value nodes settle under prediction errors (predictive coding): each error "
            "node, value minus prediction, moves towards its upper error's message through W "
            "or B; W's update uses the settled errors",
    update="model", transported=(("backward", "learned"),),
    # Fixed predictions run on the model's computation graph (every family); these two
    # settle block by block down a sequential model.
    option_families=(
        ("prediction", "strict", ("mlp", "lenet"),
         "strict predictions are recomputed block by block down a sequential model"),
        ("error_weights", "learned", ("mlp", "lenet"),
         "learned error weights V mix the channels of the one weight layer producing each "
         "value node, which a graph's nodes (sums over shortcuts) do not have"),
    )))
