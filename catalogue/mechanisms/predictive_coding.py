from catalogue.mechanism import MechanismDeclaration, register_mechanism

register_mechanism(MechanismDeclaration(
    name="predictive_coding",
    summary="value nodes settle under prediction errors (predictive coding): each error "
            "node, value minus prediction, moves towards its upper error's message through W "
            "or B; W's update uses the settled errors",
    update="model", transported=(("backward", "learned"),),
    families=("mlp", "lenet"),
    families_why="its value nodes settle block by block down a sequential model (strict "
                 "predictions are recomputed block by block)"))
