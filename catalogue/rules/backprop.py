from catalogue.rule import Rule, register_rule

register_rule(Rule(
    name="backprop",
    summary="Reference: B is W (layers stay plain), exact gradients.",
    reference="Rumelhart, Hinton & Williams 1986, Learning representations by "
              "back-propagating errors (Nature)",
    mechanism="tied", local=False,
))
