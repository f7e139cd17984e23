"""Delayed match-to-sample: two cues separated by a delay; at the last step, do they match?

The task of Liu et al.'s ModProp code (their "delayed XOR", answered as match / non-match):
two input channels. Channel 1 carries cue 1 in the first ``cue_steps`` steps, channel 2 carries
cue 2 in the last ``cue_steps``, with ``delay_steps`` between them. Each cue is a bit drawn
fair and independently: a 1 is a Gaussian bump ``amplitude * exp(-tau^2 / (2 sigma^2))`` on
top of the baseline over its window (tau evenly from -cue/2 to cue/2, sigma = cue / 4), a 0
leaves the baseline, which every other step carries too. Every input value gets independent
Gaussian noise. Label 1 (match) when the bits are equal, 0 (non-match) otherwise, so about
half the examples match.

Their reference runs 1 ms steps with cues of 100 and a delay of 700 (900 steps, baseline
0.02, amplitude 2, noise 0.01). The defaults here keep every shape and scale the durations by
1/10 (90 steps), so that a CPU trains it in seconds per epoch; ``cue_steps=100
delay_steps=700`` is the reference. Their code draws a fresh batch every step; a fixed
training set and an independent validation set (our choice) make the generalization gap
measurable.
"""

from __future__ import annotations

import numpy as np

from trainer.datasets.base import register_dataset
from trainer.datasets.generated import Drawn, GeneratedSource, Settings, stream


class DelayedMatch(GeneratedSource):
    name = "delayed_match"
    summary = ("delayed match-to-sample (Liu et al.'s ModProp task): two cues, a delay, "
               "match or not at the last step; generated")
    options = {
        "train_size": (2048, "training examples (a fixed, seeded draw)"),
        "val_size": (512, "validation examples (an independent draw)"),
        "cue_steps": (10, "steps each cue lasts (reference: 100)"),
        "delay_steps": (70, "steps between the cues (reference: 700)"),
        "amplitude": (2.0, "height of a cue's Gaussian bump above the baseline"),
        "baseline": (0.02, "input value outside a cue (and under a 0 cue)"),
        "noise": (0.01, "standard deviation of the Gaussian noise on every input value"),
        "data_seed": (0, "seed of the draws (the splits use independent streams of it)"),
    }
    limits = {"train_size": (1, None), "val_size": (1, None), "cue_steps": (2, None)}

    def shape(self, settings: Settings) -> tuple[int, int, int]:
        return 2 * settings["cue_steps"] + settings["delay_steps"], 2, 2

    def generate(self, settings: Settings, split: str, size: int) -> Drawn:
        rng = stream(settings, split)
        cue = settings["cue_steps"]
        steps = self.shape(settings)[0]
        bits = rng.integers(0, 2, (size, 2))
        tau = np.linspace(-cue / 2, cue / 2, cue)
        bump = settings["amplitude"] * np.exp(-tau ** 2 / (2 * (cue / 4) ** 2))
        x = np.full((size, steps, 2), settings["baseline"])
        x[:, :cue, 0] += bits[:, :1] * bump
        x[:, steps - cue:, 1] += bits[:, 1:] * bump
        x += rng.normal(0.0, settings["noise"], x.shape)
        match = (bits[:, 0] == bits[:, 1]).astype(np.int64)
        return x.astype(np.float32), match, match


register_dataset(DelayedMatch())
