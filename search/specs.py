"""What a sweep or a transfer study runs: plain specs, checked before anything is written.

They import neither torch nor Ray, so the command line takes its defaults from them (one
source for each) and checks them instantly; only the data check reads files.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from catalogue import noisy_backprop
from catalogue.architectures import ARCHITECTURES, architecture
from catalogue.errors import UsageError
from catalogue.rule import rule_declaration
from catalogue.training import TrainConfig
from search.execution import Execution
from search.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, multi_arch_name
from search.searchers import SEARCHERS
from search.trial_io import split_sampled
from spaces import SearchSpace, check_values, default_space
from spaces.registry import for_architectures

SELECTIONS = ("best", "robust")  # which transferred setting a transfer study reports
SCHEDULERS = ("fifo", "asha")
ON_CHANGE = ("refuse", "new")  # a study that exists under another configuration
# Options that decide where a run happens, not what it computes: outside a study's identity.
PLACEMENT_OPTIONS = ("device", "num_workers")
MAX_NAME = 200  # a study name becomes a Ray folder name and a database value
DEFAULTS_SOURCE = "defaults"
DEFAULT_DATASET = "digits"  # the embedded set: needs no download


def study_name_for(rule: str, arch: str, dataset: str) -> str:
    return f"{rule}.{arch}.{dataset}"


def check_study_name(name: str, flag: str = "--study") -> None:
    """A name is made once and shown everywhere: no control, format (bidi override,
    zero-width) or line-separator character that would reorder or hide what is printed."""
    import unicodedata

    shown = name if len(name) <= 40 else name[:37] + "..."
    if not name or len(name) > MAX_NAME:
        raise UsageError(f"{flag} {shown!r}: a study name must be 1-{MAX_NAME} printable "
                         "characters")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")),
               None)
    if bad is not None:
        label = unicodedata.name(bad, "a control character" if bad < "\ud800"
                                 else "an undecodable byte")
        raise UsageError(f"{flag} {shown!r}: a study name must be printable; it holds "
                         f"U+{ord(bad):04X} ({label})")


def experiment_folder(name: str) -> str:
    """A study name made safe as one folder name: no separators, no '..', bounded length."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"
    return safe[:100]


def _split_fixed(space: SearchSpace) -> tuple[dict[str, float], dict[str, float]]:
    """(fixed metaparameters, fixed training options) of a space."""
    return split_sampled(space.rule, dict(space.fixed))


@dataclass
class SweepSpec:
    rule: str = "information_alignment"
    arch: str = "resnet8"  # the first of ``archs`` when a trial trains on several
    dataset: str = "digits"
    trials: int = 32
    epochs: int = 6
    space: SearchSpace | None = None
    study: str | None = None
    storage: str | None = None
    seed: int = 0
    searcher: str = "tpe"
    scheduler: str = "fifo"
    initial_points: int | None = None
    searcher_options: dict[str, float] = field(default_factory=dict)  # the searcher's settings
    execution: Execution = field(default_factory=Execution)
    train: dict[str, Any] = field(default_factory=dict)  # further TrainConfig options
    archs: list[str] = field(default_factory=list)  # a transfer-aware sweep: each trial's archs
    objective: str = DEFAULT_OBJECTIVE  # how their top-1 values make one score
    # depth as a fidelity: an architecture of ``archs`` that trains only the first N epochs of
    # the run (its schedule and B's plan as for the whole run), a cheaper probe of that depth
    arch_epochs: dict[str, int] = field(default_factory=dict)
    on_change: str = "refuse"  # an existing study under another configuration: refuse | new

    def architectures(self) -> list[str]:
        """What every trial trains on: ``archs``, or ``arch`` alone."""
        return list(self.archs) if self.archs else [self.arch]

    def transfer_aware(self) -> bool:
        return len(self.architectures()) > 1

    def arch_label(self) -> str:
        return multi_arch_name(self.architectures())

    def resolved_space(self) -> SearchSpace:
        """The given space or the rule's, without choices the architectures refuse."""
        return for_architectures(self.space or default_space(self.rule), self.architectures(),
                                 self.train.get("model_options"))

    def study_name(self) -> str:
        return self.study or study_name_for(self.rule, self.arch_label(), self.dataset)

    def n_initial(self) -> int:
        """TPE's random start: hyperopt's 20, or a quarter of a small sweep (at least 3), so
        that TPE itself runs in sweeps shorter than 20 trials."""
        if self.initial_points is not None:
            return self.initial_points
        return min(20, max(3, self.trials // 4))

    def base_config(self) -> dict[str, Any]:
        return {**self.train, "rule": self.rule, "arch": self.arch, "dataset": self.dataset,
                "epochs": self.epochs, "seed": self.seed}

    def validate(self) -> dict[str, Any]:
        """Every check that can fail on user input, before anything is written; returns the
        training options as the trials will run them (``resolve_training``)."""
        if not isinstance(self.trials, int) or self.trials < 1:
            raise UsageError(f"--trials must be at least 1, got {self.trials}")
        if self.searcher not in SEARCHERS:
            raise UsageError(f"--searcher must be one of {', '.join(SEARCHERS)}, "
                             f"got {self.searcher!r}")
        if self.scheduler not in SCHEDULERS:
            raise UsageError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, "
                             f"got {self.scheduler!r}")
        if self.on_change not in ON_CHANGE:
            raise UsageError(f"--on-change must be one of {', '.join(ON_CHANGE)}, "
                             f"got {self.on_change!r}")
        if self.initial_points is not None and self.initial_points < 1:
            raise UsageError(f"--initial-points must be at least 1, got {self.initial_points}")
        SEARCHERS.get(self.searcher).settings(self.searcher_options)
        self._validate_archs()
        check_study_name(self.study_name())
        rule_declaration(self.rule)
        space = self.resolved_space()
        if space.rule != self.rule:
            raise UsageError(f"the search space is for {space.rule!r}, not {self.rule!r}")
        if not space.params:
            raise UsageError(f"nothing to tune for {self.rule!r}: add --space lr=LOW:HIGH")
        check_values(space)
        fixed_meta, fixed_options = _split_fixed(space)
        for arch in self.architectures():
            TrainConfig.from_dict({**self.base_config(), **fixed_options, "arch": arch,
                                   "metaparameters": fixed_meta})
        train = resolve_training(self.dataset, self.train, self.architectures(), space)
        self.execution.validate()  # last: it makes the Ray folder, written only for a run
        return train

    def resolved(self) -> "SweepSpec":
        """The spec every trial runs: validated, its data folder made the absolute folder the
        driver checked (workers run in another working directory)."""
        return replace(self, train=self.validate())

    def configuration(self) -> dict[str, Any]:
        """What a trial of this sweep means beyond its sampled values: a study's identity."""
        configuration = training_configuration(self.epochs, self.train,
                                               dict(self.resolved_space().fixed))
        if self.shortened():  # absent otherwise, as in studies written before it existed
            configuration["arch_epochs"] = dict(sorted(self.shortened().items()))
        return configuration

    def shortened(self) -> dict[str, int]:
        """The architectures that train fewer than ``epochs`` (``arch_epochs`` without the
        entries that name the whole run, which would change the identity, not the runs)."""
        return {a: n for a, n in self.arch_epochs.items() if n < self.epochs}

    def _validate_archs(self) -> None:
        archs = self.architectures()
        if not archs or any(not a for a in archs):
            raise UsageError("--arch needs at least one architecture")
        if len(set(archs)) != len(archs):
            raise UsageError(f"--arch names an architecture twice: {','.join(archs)}")
        if self.archs and self.arch != self.archs[0]:
            raise UsageError(f"the spec's arch {self.arch!r} is not the first of its archs")
        for arch in archs:
            architecture(arch)
        OBJECTIVES.get(self.objective)
        self._validate_arch_epochs()
        if self.transfer_aware() and self.scheduler != "fifo":
            raise UsageError(f"--scheduler {self.scheduler} compares trials at equal epochs; a "
                             "trial over several --arch trains them one after another, so "
                             "use --scheduler fifo")

    def _validate_arch_epochs(self) -> None:
        if not self.arch_epochs:
            return
        if not self.transfer_aware():
            raise UsageError("--arch-epochs shortens one architecture of a transfer-aware "
                             "sweep (--arch A,B,…); for every trial use --stop-after-epochs")
        for arch, epochs in self.arch_epochs.items():
            if arch not in self.archs:
                raise UsageError(f"--arch-epochs {arch}: not one of --arch "
                                 f"{','.join(self.archs)}")
            if isinstance(epochs, bool) or not isinstance(epochs, int) or not (
                    1 <= epochs <= self.epochs):
                raise UsageError(f"--arch-epochs {arch}={epochs}: a whole number of epochs "
                                 f"from 1 to --epochs ({self.epochs})")
        if self.objective == "guard" and self.archs[0] in self.shortened():
            raise UsageError(f"--objective guard scores a trial by its first architecture, "
                             f"{self.archs[0]}: shorten the others (--arch-epochs), not it")

    def to_dict(self) -> dict[str, Any]:
        """What the study keeps to resume the sweep: never the storage URL (a password)."""
        data = asdict(self)
        data["space"] = self.resolved_space().to_dict()
        data.pop("storage", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], storage: str | None = None,
                  address: str | None = None) -> "SweepSpec":
        """The spec a study recorded; older studies kept the resources as flat fields."""
        data = dict(data)
        space = space_from_dict(data.pop("space"))
        resources = data.pop("execution", None) or {
            k: data.pop(k) for k in [f.name for f in fields(Execution)] if k in data}
        if address:
            resources["address"] = address
        known = {f.name for f in fields(cls)}
        spec = cls(**{k: v for k, v in data.items() if k in known},
                   space=space, storage=storage, execution=Execution(**resources))
        return spec


def space_from_dict(data: dict[str, Any]) -> SearchSpace:
    from spaces import Choice, Param

    base = default_space(data["rule"])
    params = {n: Choice(n, tuple(p["choices"])) if "choices" in p
              else Param(n, p["low"], p["high"], p["log"], p.get("integer", False))
              for n, p in data["params"].items()}
    return SearchSpace(data["rule"], params, data["fixed"], known=base.known)


def resolve_training(dataset: str, train: dict[str, Any], archs: list[str],
                     space: SearchSpace | None = None) -> dict[str, Any]:
    """The training options as every trial will run them, checked against the data.

    The data folder becomes the absolute folder the dataset is read from (a folder the user
    names is the only one used), and the largest training and validation subsets any trial
    can ask for (a fixed value, or a ``--space`` range's upper end) are checked against the
    split sizes, with the images' size against memory and every architecture (a generated
    set under its ``dataset_options``). Reads only file headers and folder listings (imports
    the trainer's datasets, not torch's models).
    """
    from trainer.datasets import check_dataset

    largest = {key: _largest(key, train, space) for key in ("train_subset", "val_subset")}
    folder = check_dataset(dataset, train.get("data_dir"), tuple(archs),
                           train.get("image_size"), **largest,
                           options=train.get("dataset_options"))
    return {**train, "data_dir": folder} if folder is not None else dict(train)


def check_takes(dataset: str, archs: list[str]) -> None:
    """UsageError unless every architecture takes the dataset's kind of input and task (an
    image model refuses a sequence set): what needs no data folder, checked first."""
    from catalogue.tasks import get_task
    from trainer.datasets.base import DATASETS

    source = DATASETS.get(dataset)
    spec, task = source.input_spec(), get_task(source.task)
    for arch in archs:
        architecture(arch).check_fits(dataset, spec, task)


def _largest(key: str, train: dict[str, Any], space: SearchSpace | None) -> int | None:
    """The largest value of an integer option any trial can run with."""
    from spaces import Choice

    if space is not None and key in space.params and not isinstance(space.params[key], Choice):
        return int(space.params[key].high)
    if space is not None and key in space.fixed:
        return int(float(space.fixed[key]))
    value = train.get(key)
    return None if value is None else int(value)


def training_configuration(epochs: int, train: dict[str, Any],
                           fixed: dict[str, Any]) -> dict[str, Any]:
    """A study's identity: the epochs, the resolved training options (where a run happens
    left out) and the values held fixed."""
    return {"epochs": epochs,
            "train": {k: v for k, v in sorted(train.items()) if k not in PLACEMENT_OPTIONS},
            "fixed": dict(sorted(fixed.items()))}


@dataclass
class TransferSpec:
    rule: str
    source: str | None
    targets: list[str]
    dataset: str | None = None  # default: the source study's (digits with --defaults)
    top_k: int = 1
    seeds: int = 3
    epochs: int | None = None  # default: the source study's
    retune: int = 0
    storage: str | None = None
    source_study: str | None = None
    name: str | None = None
    defaults: bool = False  # transfer the rule's official defaults instead of a study's best
    select: str = "best"  # best: per target, the best there; robust: one, chosen on the source
    baseline_study: str | None = None  # backprop runs shared with other transfer studies
    execution: Execution = field(default_factory=Execution)
    train: dict[str, Any] = field(default_factory=dict)

    def source_archs(self) -> list[str]:
        """The source's architectures: one, or a transfer-aware sweep's (A+B)."""
        return self.source.split("+") if self.source else []

    def dataset_name(self) -> str:
        return self.dataset or DEFAULT_DATASET

    def source_name(self) -> str:
        if self.defaults:
            return DEFAULTS_SOURCE
        return self.source_study or study_name_for(self.rule, self.source, self.dataset_name())

    def study_name(self) -> str:
        origin = DEFAULTS_SOURCE if self.defaults else self.source
        return self.name or f"transfer.{self.rule}.{origin}.{self.dataset_name()}"

    def trained_archs(self) -> list[str]:
        """Every architecture a run of the study trains: the targets, and a single source
        (``--select robust`` scores the settings there)."""
        return [*self.targets, *([self.source] if self.source in ARCHITECTURES else [])]

    def validate(self) -> None:
        if not self.targets:
            raise UsageError("--targets needs at least one architecture")
        if len(set(self.targets)) != len(self.targets):
            raise UsageError(f"--targets names an architecture twice: {','.join(self.targets)}")
        if self.defaults == bool(self.source or self.source_study):
            raise UsageError("give either --source (a study's best settings) or --defaults")
        for arch in [*self.source_archs(), *self.targets]:
            architecture(arch)
        if len(self.source_archs()) > 1 and self.select == "robust":
            raise UsageError("--select robust re-runs the settings on the one source "
                             f"architecture; the sweep over {self.source} scored them on "
                             "each already: use --select best")
        for flag, value in (("--top-k", self.top_k), ("--seeds", self.seeds)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        if self.retune < 0:
            raise UsageError(f"--retune must be >= 0, got {self.retune}")
        if self.select not in SELECTIONS:
            raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, "
                             f"got {self.select!r}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        check_study_name(self.study_name(), "--name")
        if self.baseline_study is not None:
            check_study_name(self.baseline_study, "--baseline-study")
        rule_declaration(self.rule)
        for target in self.targets:  # each target the rule's mechanism must take
            TrainConfig.from_dict({**self.train, "rule": self.rule, "arch": target,
                                   "dataset": self.dataset_name()})
        if self.dataset is not None or not self.source_study:  # else: the source's data
            check_takes(self.dataset_name(), self.trained_archs())
        self.execution.validate()  # last: it makes the Ray folder, written only for a run
        # The data's folder, sizes and images are checked once the source's training
        # options are known (run_transfer).


BACKPROP = "backprop"
BACKPROP_NOISE_HELP = noisy_backprop.HELP


@dataclass
class RobustnessSpec:
    rules: list[str]
    arch: str = "resnet20"
    dataset: str = "digits"
    noise: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3, 1e-2])
    seeds: int = 3
    epochs: int = 6
    name: str | None = None
    storage: str | None = None
    execution: Execution = field(default_factory=Execution)
    train: dict[str, Any] = field(default_factory=dict)

    def study_name(self) -> str:
        return self.name or f"robustness.{self.arch}.{self.dataset}"

    def validate(self) -> dict[str, Any]:
        """Every check on the input; returns the training options as the runs train them."""
        if not self.rules:
            raise UsageError("--rules needs at least one rule")
        if len(set(self.rules)) != len(self.rules):
            raise UsageError(f"--rules names a rule twice: {','.join(self.rules)}")
        for rule in self.rules:
            declared = rule_declaration(rule)
            if not (declared.learns_feedback or declared.transported_options
                    or declared.mechanism == "tied"):
                raise UsageError(f"{rule} has no learned B for the noise to perturb (its B is "
                                 f"{declared.mechanism})")
        if not self.noise or len(set(self.noise)) != len(self.noise):
            raise UsageError("--noise needs distinct variances, e.g. 0,1e-4,1e-3")
        for v in self.noise:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UsageError(f"--noise: a variance must be finite and >= 0, got {v!r}")
        if self.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {self.seeds}")
        check_study_name(self.study_name(), "--name")
        architecture(self.arch)
        for rule in self.rules:
            TrainConfig.from_dict({**self.base(), **self.config_of(rule, max(self.noise), 0)})
        train = resolve_training(self.dataset, self.train, [self.arch])
        self.execution.validate()  # last: it makes the Ray folder, written only for a run
        return train

    def resolved(self) -> "RobustnessSpec":
        """The spec every run trains under: validated, its data folder made absolute."""
        return replace(self, train=self.validate())

    def base(self) -> dict[str, Any]:
        return {**self.train, "arch": self.arch, "dataset": self.dataset,
                "epochs": self.epochs}

    def config_of(self, rule: str, noise: float, seed: int) -> dict[str, Any]:
        """The TrainConfig values of one run: backprop through its transported copy of W
        (``catalogue.noisy_backprop``); a rule whose B can be W's transported copy
        (activation relaxation's backward=learned) run that way from B = W, so that without
        noise it is the rule with B = W."""
        config: dict[str, Any] = {"rule": rule, "seed": seed, "update_noise": float(noise)}
        declared = rule_declaration(rule)
        if rule == BACKPROP:
            config.update(noisy_backprop.transported_copy(
                self.train.get("weight_decay", TrainConfig().weight_decay)))
        elif not declared.learns_feedback and declared.transported_options:
            config.update(copy_weights=True, metaparameters=declared.transported_options)
        return config
