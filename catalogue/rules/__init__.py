"""One module per credit-assignment rule; each calls ``catalogue.rule.register_rule``.

Every module here is imported the first time the rule registry is read: a new rule is a new
file, with nothing to list anywhere else.
"""
