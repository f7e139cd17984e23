from catalogue.mechanism import MechanismDeclaration, register_mechanism

# B is fixed random (Murray 2019 never trains it) and carries the output error to the hidden
# units only; no weight of the network carries credit back in time.
register_mechanism(MechanismDeclaration(
    name="rflo",
    summary="a fixed random B (hidden x outputs, at the readout's scale, never trained) "
            "broadcasts the output error to each hidden unit, which weights every synapse's "
            "online trace (presynaptic activity times f', low-pass filtered by the leak)",
    update="model", families=("rnn",),
    families_why="its traces run over the rate RNN's time steps and leak"))
