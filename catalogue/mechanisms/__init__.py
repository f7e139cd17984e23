"""One module per credit-assignment mechanism; each calls
``catalogue.mechanism.register_mechanism``. Every module here is imported the first time the
mechanism registry is read (the first rule declared reads it)."""
