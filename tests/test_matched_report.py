"""The sweep report's comparison at matched training loss, on a small SQLite study whose
trials' histories are written by hand as the recorder keeps them (flat rows): the values in
summary.md and on matched_loss.png are checked against linear interpolation done here, the
correlations against ``statistics`` and ranks counted by hand."""

from __future__ import annotations

import statistics

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search import reports
from search.reports.matched import matched_lines, matched_loss_figure

LR = FloatDistribution(1e-7, 1.0, log=True)
# Per trial: (training loss, loss gap, λ_max) at each measured epoch.
CURVES = {
    0: [(2.0, 0.0, 10.0), (1.0, 0.1, 20.0), (0.5, 0.3, 40.0)],
    1: [(1.8, 0.0, 5.0), (1.2, 0.05, 15.0), (0.8, 0.2, 25.0)],
    2: [(1.6, 0.02, 4.0), (0.9, 0.12, 30.0), (0.4, 0.5, 60.0)],
    3: [(3.0, 0.0, 1.0), (2.5, 0.01, 2.0)],  # barely learned: never reaches the level
}
LEVEL = 0.8  # the lowest loss trials 0, 1 and 2 all came down through (trial 1's last)
# Interpolated at 0.8: trial 0 is 40 % of the way from 1.0 to 0.5, trial 2 20 % from 0.9 to
# 0.4, trial 1 measured it.
AT_LEVEL = {0: (0.1 + 0.4 * 0.2, 20 + 0.4 * 20), 1: (0.2, 25.0),
            2: (0.12 + 0.2 * 0.38, 30 + 0.2 * 30)}


def _row(epoch: int, loss: float, gap: float, lam: float) -> dict:
    return {"epoch": epoch, "val_top1": 0.5, "train_loss": loss, "train_loss_eval": loss,
            "loss_gap": gap, "top_eigenvalue": lam, "top_eigenvalue_recurrent": lam / 2}


def _trial(number: int, curve, state=TrialState.COMPLETE, earlier: int = 0):
    """``earlier`` epochs that measured nothing come first (as with --curvature-every)."""
    history = [{"epoch": e, "val_top1": 0.4, "train_loss": 3.0} for e in range(1, earlier + 1)]
    history += [_row(e, *c) for e, c in enumerate(curve, earlier + 1)]
    return create_trial(state=state, value=0.5 + 0.01 * number if state == TrialState.COMPLETE else None,
                        params={"lr": 10.0 ** -(number + 1)}, distributions={"lr": LR},
                        user_attrs={"status": "completed", "history": history})


@pytest.fixture
def study(tmp_path):
    study = optuna.create_study(study_name="bptt.rnn.digits",
                                storage=f"sqlite:///{tmp_path / 'studies.db'}",
                                direction="maximize")
    for key, value in {"kind": "sweep", "rule": "feedback_alignment", "arch": "rnn",
                       "dataset": "digits", "epochs": 4, "seed": 0}.items():
        study.set_user_attr(key, value)
    for number, curve in CURVES.items():
        study.add_trial(_trial(number, curve, earlier=4 - len(curve)))
    # Measured only at the end, and a failed trial: neither is compared.
    study.add_trial(_trial(4, [(0.7, 0.3, 50.0)], earlier=3))
    study.add_trial(_trial(5, [(1.0, 0.1, 9.0), (0.6, 0.2, 9.5)], state=TrialState.FAIL))
    return study


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    reports.plt.close("all")


def _table(text: str) -> dict[int, list[str]]:
    """The section's table: trial number -> its cells."""
    section = text.split("## Generalisation at matched training loss", 1)[1]
    rows = [line.strip("|").split("|") for line in section.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    return {int(cells[0]): [c.strip() for c in cells[1:]] for cells in rows}


def test_summary_lists_each_trial_at_the_matched_loss_and_the_correlation(study, tmp_path):
    written = reports.study_report(study, tmp_path / "report")
    assert "matched_loss.png" in written
    text = (tmp_path / "report" / "summary.md").read_text()
    assert f"training loss **{LEVEL:.4g}**" in text and "(3 of 4)" in text
    table = _table(text)
    assert sorted(table) == [0, 1, 2, 3]  # measured along training, completed
    for number, (gap, lam) in AT_LEVEL.items():
        params, *values = table[number]
        assert params == f"lr={10.0 ** -(number + 1):.3g}"
        assert [float(v) for v in values] == pytest.approx([gap, lam, lam / 2], rel=1e-3)
    assert table[3][1:] == ["-", "-", "-"]
    gaps, lams = zip(*AT_LEVEL.values())
    # Ranks by hand: gaps 0.18 < 0.196 < 0.2 -> 1, 3, 2; λ 25 < 28 < 36 -> 2, 1, 3.
    spearman = statistics.correlation([1, 3, 2], [2, 1, 3])
    assert spearman == pytest.approx(-0.5)
    expected = (f"Pearson {statistics.correlation(gaps, lams):+.2f}, Spearman "
                f"{spearman:+.2f} (3 trials)")
    assert f"λ_max: {expected}; with λ_max W_rec: {expected}." in text


def test_the_figure_has_one_point_per_trial_at_the_matched_loss(study):
    ax = matched_loss_figure(study.trials, ["context"]).axes[0]
    assert len(ax.collections) == 1
    drawn = sorted(map(tuple, ax.collections[0].get_offsets().tolist()))
    expected = sorted((lam, gap) for gap, lam in AT_LEVEL.values())
    assert [c for point in drawn for c in point] == pytest.approx(
        [c for point in expected for c in point])
    assert sorted(t.get_text() for t in ax.texts) == ["#0", "#1", "#2"]
    assert f"matched training loss {LEVEL:.4g}" in ax.get_title()
    assert "not shown: 1 trials that never came down through it" in ax.get_title()


def test_fewer_than_two_trials_along_training_say_why_and_none_say_nothing(study):
    one = [t for t in study.trials if t.number in (0, 4, 5)]
    lines = matched_lines(one, ["lr"])
    assert len([line for line in lines if line]) == 1
    assert "two completed trials" in lines[0] and "1 of the 2 that measured did" in lines[0]
    assert matched_loss_figure(one, []) is None
    unmeasured = [create_trial(value=0.5, params={}, distributions={},
                               user_attrs={"history": [{"epoch": 1, "val_top1": 0.5}]})]
    assert matched_lines(unmeasured, []) == []
