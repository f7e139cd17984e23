"""How trials run on Ray: one execution spec shared by sweeps, transfers and every study.

``Execution`` holds the Ray resources of a run (concurrency, CPUs and GPUs per trial, the
cluster address, retries of a crashed worker, where Ray keeps its folders). ``tuner`` builds
the one Ray Tune ``Tuner`` every study runs through, so that resources, retries and storage
behave the same everywhere. Nothing here imports Ray until a run starts: the command line reads
the fields' defaults and help for ``--help``.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from catalogue.errors import UsageError

RAY_DIR_ENV = "CREDITSWEEP_RAY_DIR"
DEFAULT_RAY_DIR = "~/.creditsweep/ray"


def _option(default: Any, help: str, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class Execution:
    max_concurrent: int = _option(2, "trials running at once (TPE sees results before it "
                                     "samples more)")
    cpus_per_trial: float = _option(1.0, "CPUs per trial, also its torch thread count")
    gpus_per_trial: float = _option(0.0, "GPU share per trial, 0..1; 0.5 packs two trials "
                                         "per GPU")
    address: str | None = _option(None, "join this Ray cluster (default: $RAY_ADDRESS, else "
                                         "a local Ray)", "HOST:PORT")
    max_failures: int = _option(2, "retries of a trial whose worker crashed")
    checkpoint_every: int = _option(1, "save each trial's whole state every N epochs through "
                                       "Ray Tune's storage (0: off); a retried trial goes on "
                                       "from its last checkpoint, and a finished trial's "
                                       "checkpoint is deleted", "N")
    ray_dir: str | None = _option(None, f"where Ray keeps experiment folders (default: "
                                        f"${RAY_DIR_ENV}, else {DEFAULT_RAY_DIR}); a URI "
                                        "(s3://…) is passed to Ray as it is", "DIR")

    def validate(self) -> None:
        """Every check on the resources that needs no running Ray."""
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 1:
            raise UsageError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        if not (_finite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise UsageError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if not (_finite(self.gpus_per_trial) and 0 <= self.gpus_per_trial <= 1):
            # A trial trains on one device: a fraction packs trials onto a GPU, more than
            # one GPU would be reserved and left idle.
            raise UsageError(f"--gpus-per-trial must be between 0 and 1 (a trial trains on one "
                             f"device; 0.5 packs two trials per GPU), got {self.gpus_per_trial}")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise UsageError(f"--max-failures must be >= 0, got {self.max_failures}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise UsageError(f"--checkpoint-every must be >= 0 (0: off), got "
                             f"{self.checkpoint_every}")
        self._check_ray_dir()
        self._check_address()

    def _check_ray_dir(self) -> None:
        """A Ray folder that cannot be made would fail inside Tune, after the study was
        written; a URI is Ray's to check."""
        path = self.resolved_ray_dir()
        if "://" in path:
            return
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--ray-dir {path}: cannot create it ({exc.strerror})") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--ray-dir {path}: not writable")

    def _check_address(self, timeout: float = 5.0) -> None:
        """A head that does not answer: Ray itself would retry for minutes before failing."""
        address = self.address or os.environ.get("RAY_ADDRESS")
        if not address or address == "auto":
            return
        hostport = address.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--address {address!r}: expected HOST:PORT, e.g. 10.0.0.5:6379")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
                speaks_grpc = _answers_http2(s) if not os.environ.get("RAY_USE_TLS") else True
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = "it accepts connections but never answers"
            raise UsageError(f"--address {address}: no Ray head answers there ({reason}; "
                             f"waited up to {timeout:g} s)") from None
        if not speaks_grpc:
            raise UsageError(f"--address {address}: something answers there, but not a Ray "
                             "head (Ray's GCS speaks gRPC)")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_trial))

    def resolved_ray_dir(self) -> str:
        """A local path (made absolute) or a URI (s3://…) as it is."""
        path = self.ray_dir or os.environ.get(RAY_DIR_ENV) or DEFAULT_RAY_DIR
        if "://" in path:
            return path.rstrip("/")
        return str(Path(path).expanduser().resolve())

    def prepare(self) -> None:
        """Before Ray is imported: a local Ray keeps token authentication on, and saying so
        explicitly is what stops Ray from printing that it chose it. Ray reads the mode when
        it is imported, so once it is, this changes nothing (setting it then would make Ray's
        servers demand a token Ray never wrote)."""
        if "ray" not in sys.modules and not (self.address or os.environ.get("RAY_ADDRESS")):
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        # Tune warns whenever its loop spends half a second on a result; our recorder writes
        # the study there, and the warning would interleave the progress lines with nothing
        # to act on. Read when ray.tune is imported, so set before.
        os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")

    def connect(self) -> None:
        """Start or join Ray, then refuse resources the cluster cannot give: a trial that asks
        for more than there is would wait forever."""
        self.prepare()
        import ray

        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's tables would drown ours
        # Keeping one checkpoint per trial makes Tune snapshot its experiment state after each
        # one; with epochs of seconds it then warns on every epoch. The snapshot is small and
        # the study, not Tune's state, is the ledger, so the warning says nothing to act on.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address:
                try:
                    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
                except ConnectionError as exc:  # something answered, but not a Ray head
                    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                    raise UsageError(f"--address {address}: cannot join a Ray cluster there "
                                     f"({first})") from None
            else:
                ray.init(dashboard_host="127.0.0.1", log_to_driver=False,
                         logging_level="WARNING")
        have = ray.cluster_resources()
        for name, want in (("CPU", self.cpus_per_trial), ("GPU", self.gpus_per_trial)):
            if want > have.get(name, 0.0):
                raise UsageError(f"each trial asks for {want:g} {name}(s) but the Ray cluster "
                                 f"has {have.get(name, 0.0):g}")

    def trainable(self, function: Callable[..., None], **parameters: Any) -> Any:
        """``function(config, **parameters)`` as a Tune trainable with this run's resources."""
        from ray import tune

        parameters.setdefault("checkpoint_every", self.checkpoint_every)
        return tune.with_resources(tune.with_parameters(function, **parameters),
                                   {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial})

    def tuner(self, trainable: Any, *, name: str, callbacks: list, num_samples: int = 1,
              search_alg: Any = None, scheduler: Any = None, param_space: dict | None = None,
              metric: str | None = None, mode: str | None = None) -> Any:
        """The Tuner every study runs: this run's concurrency, retries and Ray folder."""
        from ray import tune

        concurrency = {} if search_alg is not None else {
            "max_concurrent_trials": self.max_concurrent}
        return tune.Tuner(
            trainable, param_space=param_space or {},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=search_alg,
                                        scheduler=scheduler, num_samples=num_samples,
                                        reuse_actors=True, **concurrency),
            run_config=tune.RunConfig(
                name=name, storage_path=self.resolved_ray_dir(), verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=callbacks))


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _answers_http2(sock: socket.socket) -> bool:
    """Whether the server answers an HTTP/2 client preface with a SETTINGS frame, as every
    gRPC server (Ray's GCS among them) does at once. A port that accepts and then says
    nothing would otherwise hold ``ray.init`` in Ray's own GCS timeout for minutes."""
    sock.sendall(HTTP2_PREFACE)
    header = b""
    while len(header) < 9:
        chunk = sock.recv(9 - len(header))
        if not chunk:
            return False
        header += chunk
    return header[3] == 0x04


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def execution_options() -> list:
    return list(fields(Execution))
