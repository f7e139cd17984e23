from trainer.mechanisms import Mechanism, register_behaviour


class Fixed(Mechanism):
    """A random B, drawn by convert at W's scale, that nothing trains: the defaults."""

    name = "fixed"


register_behaviour(Fixed())
