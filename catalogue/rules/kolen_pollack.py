from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="kolen_pollack",
    summary="B receives W's gradient plus alpha-weighted decay, so B - W decays to zero.",
    reference="Kolen & Pollack 1994, Backpropagation without weight transport (ICNN); "
              "Akrout et al. 2019 (NeurIPS) for deep networks",
    mechanism="learned", terms={"decay": "alpha"}, defaults={"alpha": 1e-3},
    local=False, receives_task_gradient=True,
))
