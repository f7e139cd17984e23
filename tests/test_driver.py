"""One driver for every kind of study: checks before Ray, one session per command, nested
kinds (``transfer --retune``) leased and run inside their parent's session, under its
training options."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import pytest
import sqlalchemy as sa

from catalogue.errors import UsageError
from search.cli import main
from search.driver import Session, StudyPlan, drive, open_session
from search.execution import Execution


@dataclass(frozen=True)
class CountingExecution(Execution):
    """Execution whose Ray connection is counted instead of made: these tests are about the
    order of the driver's steps, not about Ray."""

    def connect(self) -> None:
        CONNECTS.append(1)


CONNECTS: list[int] = []


class Kind:
    def __init__(self, plans: list[StudyPlan], nested: "Kind | None" = None) -> None:
        self.execution = CountingExecution()
        self.plans, self.nested, self.ran = plans, nested, []

    def prepare(self, session: Session) -> None:
        if self.nested:
            self.nested.prepare(session)

    def studies(self) -> list[StudyPlan]:
        return self.plans + (self.nested.studies() if self.nested else [])

    def run(self, session: Session) -> None:
        self.ran.append([lease.key for lease in session.leases])
        for plan in self.plans:
            session.study(plan.name).set_user_attr("ran", True)
        if self.nested:
            self.nested.run(session)

    def summary(self, session: Session) -> list:
        return self.ran


def _plan(name: str, **attrs) -> StudyPlan:
    return StudyPlan(name, {"kind": "test", **attrs}, ("kind", "epochs"), f"study:{name}",
                     f"test study {name}")


@pytest.fixture
def url(tmp_path):
    CONNECTS.clear()
    return f"sqlite:///{tmp_path / 'studies.db'}"


def test_a_nested_kind_is_checked_leased_and_run_in_its_parents_session(url):
    inner = Kind([_plan("inner", epochs=1)])
    outer = Kind([_plan("outer", epochs=1)], nested=inner)
    session = open_session(url, lambda line: None)
    drive(outer, session)
    assert CONNECTS == [1]  # Ray once per command
    # both studies' leases were held while either ran, and the nested kind ran inside
    assert outer.ran == [["study:outer", "study:inner"]] and inner.ran == outer.ran
    for name in ("outer", "inner"):
        assert optuna.load_study(study_name=name, storage=url).user_attrs["ran"] is True
    # released afterwards: the lease rows stay (their fence only grows) but are free
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        holders = dict(conn.execute(sa.text("SELECT key, token FROM creditsweep_leases")).all())
    assert set(holders) == {"study:outer", "study:inner"} and set(holders.values()) == {""}


def test_a_nested_study_of_another_configuration_is_refused_before_ray_or_any_write(url):
    drive(Kind([_plan("inner", epochs=1)]), open_session(url, lambda line: None))
    CONNECTS.clear()
    outer = Kind([_plan("outer", epochs=1)], nested=Kind([_plan("inner", epochs=2)]))
    with pytest.raises(UsageError, match="epochs 1 -> 2"):
        drive(outer, open_session(url, lambda line: None))
    assert CONNECTS == [] and outer.ran == []
    assert "outer" not in optuna.get_all_study_names(url)


def test_nothing_to_write_needs_no_ray(url):
    kind = Kind([])
    assert drive(kind, open_session(url, lambda line: None)) == []
    assert CONNECTS == []


@pytest.mark.slow
def test_retune_sweeps_train_under_the_transferred_runs_options(ray_session, ray_dir, url,
                                                                 capsys):
    """``--retune`` is a sweep per target inside the transfer's session, and it trains
    under exactly the options the transferred runs train under: the source's configuration
    (subsets, lr) plus this command's own options."""
    assert main(["sweep", "--rule", "symmetric_alignment", "--arch", "mlp", "--trials", "1",
                 "--epochs", "1", "--train-subset", "300", "--val-subset", "200", "--lr", "0.1",
                 "--storage", url]) == 0
    assert main(["transfer", "--rule", "symmetric_alignment", "--source", "mlp", "--targets",
                 "resnet8", "--seeds", "1", "--retune", "1", "--batch-size", "64",
                 "--storage", url]) == 0
    transfer = optuna.load_study(study_name="transfer.symmetric_alignment.mlp.digits",
                                 storage=url)
    transferred = next(t for t in transfer.trials if t.user_attrs["role"] == "transferred")
    retuned = optuna.load_study(study_name="symmetric_alignment.resnet8.digits", storage=url)
    assert len(retuned.trials) == 1
    assert transfer.user_attrs["retuned"]["resnet8"]["study"] == retuned.study_name
    drop = ("rule", "metaparameters", "seed")
    ran = {k: v for k, v in retuned.trials[0].user_attrs["train_config"].items()
           if k not in drop}
    assert ran == {k: v for k, v in transferred.user_attrs["train_config"].items()
                   if k not in drop}
    assert (ran["train_subset"], ran["val_subset"], ran["lr"], ran["batch_size"]) == (
        300, 200, 0.1, 64)
    # A re-run tops the retune study up to its count: nothing more to train there.
    assert main(["transfer", "--rule", "symmetric_alignment", "--source", "mlp", "--targets",
                 "resnet8", "--seeds", "1", "--retune", "1", "--batch-size", "64",
                 "--storage", url]) == 0
    assert len(optuna.load_study(study_name=retuned.study_name, storage=url).trials) == 1
