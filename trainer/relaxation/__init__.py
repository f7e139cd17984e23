"""The relaxation engine shared by the whole-model mechanisms that relax activations to the
error: ``graph`` (any model, skip connections as a computation graph) and ``sequential`` (the
first, block-by-block engine for an nn.Sequential); and ``inversion``, one layer's inversion
loop for dynamic inversion."""

from trainer.relaxation.graph import Capture, Recorder

__all__ = ["Capture", "Recorder"]
