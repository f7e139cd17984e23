from trainer.mechanisms import Mechanism, register_behaviour


class Tied(Mechanism):
    """B is W: convert leaves the layers plain, autograd gives the exact gradient."""

    name = "tied"

    def swaps_layers(self) -> bool:
        return False


register_behaviour(Tied())
