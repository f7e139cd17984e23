"""The gap and λ_max at matched training loss, on histories built by hand (linear
interpolation of known values), and the correlations across runs."""

import statistics

import pytest

from search.matched_loss import (at_loss, common_level, covering_level, matched,
                                 matched_levels, points, ranks, spearman)


def _history(losses, gaps, eigenvalues, nested=True):
    """Epoch records as trainer.train writes them (nested) or as a study's history keeps
    them (flat); epoch 1 measured nothing, as with --curvature-every 2."""
    rows = [{"epoch": 1, "train_loss": 9.0}]
    for i, (loss, gap, lam) in enumerate(zip(losses, gaps, eigenvalues), 2):
        c = {"train_loss_eval": loss, "loss_gap": gap, "top_eigenvalue": lam}
        rows.append({"epoch": i, "curvature": c} if nested else {"epoch": i, **c})
    return rows


RUNS = {
    "a": _history([2.0, 1.0, 0.5], [0.0, 0.1, 0.3], [10.0, 20.0, 40.0]),
    "b": _history([1.8, 1.2, 0.8], [0.0, 0.05, 0.2], [5.0, 15.0, 25.0], nested=False),
    # Not monotone: it first comes down through 0.8 between 1.5 and 0.7.
    "c": _history([1.5, 0.7, 0.9, 0.6], [0.0, 0.4, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0]),
}


def test_the_default_level_is_the_lowest_loss_every_run_reached():
    assert common_level(RUNS) == 0.8  # run b never went lower


def test_the_covering_level_is_the_lowest_loss_the_most_runs_came_down_through():
    # "d" barely learned: the common level 1.7 is above c's first measurement, so c has no
    # value there; three runs is the most any level has, and 0.8 is the lowest of those.
    runs = {**RUNS, "d": _history([1.9, 1.7], [0.0, 0.0], [0.0, 0.0])}
    assert common_level(runs) == 1.7
    assert covering_level(runs) == 0.8
    assert covering_level({"x": [{"epoch": 1}]}) is None


def test_each_runs_values_are_interpolated_linearly_in_the_training_loss():
    m = matched(RUNS, keys=("loss_gap", "top_eigenvalue"))
    assert m.level == 0.8
    # a: 40 % of the way from loss 1.0 to 0.5.
    assert m.values["a"]["loss_gap"] == pytest.approx(0.1 + 0.4 * 0.2)
    assert m.values["a"]["top_eigenvalue"] == pytest.approx(20 + 0.4 * 20)
    assert m.values["b"] == {"loss_gap": 0.2, "top_eigenvalue": 25.0}  # measured there
    # c: 7/8 of the way from 1.5 to 0.7, the first crossing, not the later ones.
    assert m.values["c"]["loss_gap"] == pytest.approx(0.4 * 7 / 8)
    assert m.values["c"]["top_eigenvalue"] == pytest.approx(8.0 * 7 / 8)


def test_a_level_a_run_never_crossed_has_no_value():
    low, high = matched_levels(RUNS, [0.55, 1.9], keys=("loss_gap",))
    assert low.values["b"]["loss_gap"] is None  # never that low
    assert low.values["a"]["loss_gap"] == pytest.approx(0.1 + 0.9 * 0.2)
    assert high.values["a"]["loss_gap"] == pytest.approx(0.01)
    assert high.values["b"]["loss_gap"] is None  # already below at its first measurement
    assert at_loss([], 1.0) is None and at_loss([(1.0, 3.0)], 1.0) == 3.0
    assert points(RUNS["a"], "generalization_gap") == []  # a regression run has none


def test_the_correlations_across_runs():
    histories = {f"r{i}": _history([1.0, 0.0], [0.0, 2 * g], [0.0, 2 * lam])
                 for i, (g, lam) in enumerate([(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 4.0),
                                               (5.0, 9.0)])}
    m = matched(histories, 0.5, keys=("loss_gap", "top_eigenvalue"))
    gaps, lams = m.pairs("loss_gap", "top_eigenvalue")
    assert gaps == [1, 2, 3, 4, 5] and lams == [1, 3, 2, 4, 9]
    c = m.correlation("loss_gap", "top_eigenvalue")
    assert c["runs"] == 5
    assert c["pearson"] == pytest.approx(statistics.correlation(gaps, lams))
    # Ranks of λ: 1 3 2 4 5 -> d = (0, 1, 1, 0, 0): rho = 1 - 6 * 2 / (5 * 24) = 0.9.
    assert c["spearman"] == pytest.approx(0.9)


def test_tied_values_share_their_mean_rank():
    assert ranks([3.0, 1.0, 1.0, 2.0]) == [4.0, 1.5, 1.5, 3.0]
    assert spearman([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(
        statistics.correlation([1.5, 1.5, 3, 4], [1, 2, 3, 4]))
    assert matched({"a": _history([1.0], [0.0], [0.0])}, 0.5).correlation(
        "loss_gap", "top_eigenvalue")["pearson"] is None  # too few runs
