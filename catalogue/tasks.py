"""Tasks: what a dataset's examples are, how a model's output is scored, and what fits what.

A dataset declares its task and the shape of its inputs (``InputSpec``); an architecture
declares the input kinds it takes. The trainer reads the task for the loss, the metrics and
how the model reads out (once at the last step, or at every step); the command line reads the
same declarations to refuse a model that cannot take a dataset before anything is written.
Torch-free, so that listing and refusing are instant.

- ``classification``: one label per example, cross-entropy on the model's output at the last
  step (an image classifier's only output), scored by top-1 accuracy;
- ``regression``: a target at every time step of a sequence (one per example for a vector
  input, which has no steps), mean squared error over steps and outputs, scored by the
  fraction of the target's variance explained (R^2, 1 is perfect).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from catalogue.errors import UsageError
from catalogue.registry import Registry

InputKind = Literal["image", "sequence", "vector"]
Readout = Literal["last", "every"]


@dataclass(frozen=True)
class InputSpec:
    """The shape of one example's input: an image (channels x size x size), a sequence
    (steps x features) or a vector (features, no steps: a generated regression's point). An
    image read by a recurrent model is presented row by row, as a sequence of ``size`` steps
    of ``channels * size`` inputs (``as_sequence``)."""

    kind: InputKind
    channels: int = 0
    size: int = 0
    steps: int = 0
    features: int = 0

    @classmethod
    def image(cls, channels: int, size: int) -> "InputSpec":
        return cls("image", channels=channels, size=size)

    @classmethod
    def sequence(cls, steps: int, features: int) -> "InputSpec":
        return cls("sequence", steps=steps, features=features)

    @classmethod
    def vector(cls, features: int) -> "InputSpec":
        return cls("vector", features=features)

    def as_sequence(self) -> "InputSpec":
        """The same input as a sequence: an image's rows are its steps."""
        if self.kind == "sequence":
            return self
        return InputSpec.sequence(self.size, self.channels * self.size)

    def describe(self) -> str:
        if self.kind == "image":
            return f"{self.channels}x{self.size}x{self.size} images"
        if self.kind == "vector":
            return f"vectors of {self.features} inputs"
        return f"sequences of {self.steps} steps x {self.features} inputs"


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    loss: Literal["cross_entropy", "mse"]
    readout: Readout  # where the model's output is read: the last step, or every step
    score: str  # the epoch record's field a search maximizes (higher is better)
    score_label: str  # how listings and progress lines name it
    # What the searcher is told for a run that diverged or was refused, and the least it is
    # told for any run: top-1 cannot fall below 0; an R^2 below -1 (twice the error of
    # predicting the mean) is told as -1, so that a diverged run never outranks a poor one.
    floor: float = 0.0

    def readout_for(self, spec: InputSpec) -> Readout:
        """Where a model reads its output for inputs ``spec``: the task's, except that a
        vector has no steps, so its one output per example is read once ("last")."""
        return "last" if spec.kind == "vector" else self.readout


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return TASKS.register(task.name, task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


register_task(Task(
    "classification", "one label per example; cross-entropy on the output at the last step",
    "cross_entropy", "last", "val_top1", "val top-1"))
register_task(Task(
    "regression", "a target at every step (one per example for vectors); mean squared error "
                  "over steps and outputs",
    "mse", "every", "val_r2", "val R^2", floor=-1.0))


def check_fits(arch_name: str, accepts: tuple[str, ...], dataset: str, spec: InputSpec,
               task: Task, readouts: tuple[str, ...]) -> None:
    """UsageError unless a model that takes ``accepts`` input kinds and reads out at
    ``readouts`` can be trained on ``dataset`` (its input ``spec`` and ``task``)."""
    if spec.kind not in accepts:
        raise UsageError(f"{arch_name} takes {' or '.join(accepts)} inputs, but {dataset} "
                         f"holds {spec.describe()} (list the models that take them: "
                         "creditsweep models)")
    if task.readout_for(spec) not in readouts:
        raise UsageError(f"{arch_name} reads its output once per example, but {dataset} is "
                         f"a {task.name} task with a target at every step (use --arch rnn)")
