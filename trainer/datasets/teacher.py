"""Teacher: points on the unit sphere and a random two-layer ReLU teacher's outputs.

The problem of feedback alignment's two-layer theory (Song, Xu & Lafferty 2021) as
bench/fa_theory.py draws it: each input is uniform on the unit sphere in ``dim`` dimensions
(a standard Gaussian, normalised); the target is the teacher's
y = k^-1/2 sum_j a_j relu(v_j . x) with k = ``teacher_width`` units, every v_j and a_j entry
N(0, 1), drawn once and shared by both splits, plus N(0, ``noise``^2) label noise drawn per
example (none by default). One scalar target per example: a regression scored by R^2.

The splits are independent draws of inputs (and noise), so validation measures the teacher on
points the student never trained on. The defaults are the bench's: 50 training points in 10
dimensions, a width-8 teacher; 500 validation points.
"""

from __future__ import annotations

import numpy as np

from catalogue.tasks import InputSpec
from trainer.datasets.base import register_dataset
from trainer.datasets.generated import Drawn, GeneratedSource, Settings, stream


class Teacher(GeneratedSource):
    name = "teacher"
    task = "regression"
    summary = ("points on the unit sphere, a random two-layer ReLU teacher's output as the "
               "target (feedback alignment's two-layer theory); generated")
    options = {
        "train_size": (50, "training points (full-batch gradient descent: --batch-size this)"),
        "val_size": (500, "validation points (an independent draw)"),
        "dim": (10, "input dimensions d (the points lie on the unit sphere in them)"),
        "teacher_width": (8, "hidden ReLU units of the teacher"),
        "noise": (0.0, "standard deviation of the Gaussian noise added to each target"),
        "data_seed": (0, "seed of the draws (the teacher, and each split's own stream)"),
    }
    limits = {"train_size": (1, None), "val_size": (1, None), "dim": (1, None),
              "teacher_width": (1, None)}

    def shape(self, settings: Settings) -> tuple[int, int, int]:
        return 1, settings["dim"], 1

    def spec_of(self, settings: Settings) -> InputSpec:
        return InputSpec.vector(settings["dim"])

    def teacher(self, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
        """(v (k, d), a (k,)): the teacher's weights, the same for both splits."""
        rng = stream(settings, "shared")
        k = settings["teacher_width"]
        return rng.normal(size=(k, settings["dim"])), rng.normal(size=k)

    def generate(self, settings: Settings, split: str, size: int) -> Drawn:
        v, a = self.teacher(settings)
        rng = stream(settings, split)
        x = rng.normal(size=(size, settings["dim"]))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y = np.maximum(x @ v.T, 0.0) @ a / np.sqrt(len(a))
        y += settings["noise"] * rng.normal(size=size)
        return (x.astype(np.float32), y[:, None].astype(np.float32),
                np.zeros(size, dtype=np.int64))


register_dataset(Teacher())
