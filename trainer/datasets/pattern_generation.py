"""Pattern generation: from a frozen random input, produce a target trajectory at every step.

After the e-prop pattern-generation task (Bellec et al. 2020, whose sum-of-sines target Liu
et al. use): each output's target is a sum of four sines of 1, 2, 3 and 5 cycles per sequence
(their periods 1000, 500, 333 and 200 steps over 1000), amplitudes uniform in [0.5, 2], phases
uniform in [0, 2 pi), shifted to start at 0 and scaled to a peak of 1. The input is frozen
Poisson spike noise: each of ``inputs`` channels spikes (value 1) with probability
``spike_prob`` per step (their 100 channels at 50 Hz in 1 ms steps), drawn once.

``patterns`` such (input, target) pairs are drawn once and shared by both splits. An example is
one pattern's input plus fresh Gaussian noise of standard deviation ``noise`` (our choice:
their trials repeat the identical input, which ``noise=0`` gives, and then validation repeats
training). The reference is 1000 steps; the default here is 100, so that a CPU trains it in
seconds.
"""

from __future__ import annotations

import numpy as np

from trainer.datasets.base import register_dataset
from trainer.datasets.generated import Drawn, GeneratedSource, Settings, stream

CYCLES = (1, 2, 3, 5)  # per sequence: periods 1000, 500, 333 and 200 of 1000 steps
AMPLITUDES = (0.5, 2.0)


class PatternGeneration(GeneratedSource):
    name = "pattern_generation"
    task = "regression"
    summary = ("pattern generation (e-prop's sum of four sines from frozen spike input), a "
               "target at every step; generated")
    options = {
        "train_size": (256, "training examples (the patterns in turn, fresh input noise)"),
        "val_size": (64, "validation examples (an independent noise draw)"),
        "steps": (100, "sequence length (reference: 1000)"),
        "inputs": (100, "input channels of frozen spike noise"),
        "spike_prob": (0.05, "probability that an input channel spikes at a step"),
        "outputs": (1, "target trajectories per pattern, one per output"),
        "patterns": (1, "distinct (input, target) pairs"),
        "noise": (0.1, "standard deviation of each example's Gaussian input noise"),
        "data_seed": (0, "seed of the draws (the splits use independent streams of it)"),
    }
    limits = {"train_size": (1, None), "val_size": (1, None), "steps": (2, None),
              "inputs": (1, None), "spike_prob": (0, 1), "outputs": (1, None),
              "patterns": (1, None)}

    def shape(self, settings: Settings) -> tuple[int, int, int]:
        return settings["steps"], settings["inputs"], settings["outputs"]

    def patterns(self, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
        """(inputs (P, T, F), targets (P, T, outputs)), the same for both splits."""
        rng = stream(settings, "shared")
        steps, features, outputs = self.shape(settings)
        count = settings["patterns"]
        spikes = (rng.random((count, steps, features)) < settings["spike_prob"]).astype(float)
        amplitude = rng.uniform(*AMPLITUDES, (count, outputs, len(CYCLES)))
        phase = rng.uniform(0.0, 2 * np.pi, (count, outputs, len(CYCLES)))
        t = np.arange(steps)[:, None, None, None] / steps
        waves = (amplitude * np.sin(2 * np.pi * np.array(CYCLES) * t + phase)).sum(-1)
        waves = (waves - waves[:1]).transpose(1, 0, 2)  # (P, T, outputs), starting at 0
        peak = np.abs(waves).max(axis=1, keepdims=True)
        return spikes, waves / np.where(peak > 0, peak, 1.0)

    def generate(self, settings: Settings, split: str, size: int) -> Drawn:
        spikes, targets = self.patterns(settings)
        which = np.arange(size) % settings["patterns"]
        rng = stream(settings, split)
        x = spikes[which] + rng.normal(0.0, settings["noise"], (size, *spikes.shape[1:]))
        return x.astype(np.float32), targets[which].astype(np.float32), which


register_dataset(PatternGeneration())
