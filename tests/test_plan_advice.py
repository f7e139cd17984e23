"""B's plan names the cause of what it flags: under ``auto`` an under-relaxed B is the
metaparameters' doing (their curvature is stiff), not a default's; the end of a sweep says
whether the best trial is among the flagged ones."""

from __future__ import annotations

from search.recording import plan_summary_line
from trainer.dynamics import FeedbackPlan, LayerPlan
from trainer.dynamics.plan import stiffness


def _layer(relaxations: float, top: float = 100.0, along_w: float = 1.0) -> LayerPlan:
    verdict = "under-relaxed" if relaxations < 3 else "ok"
    return LayerPlan(curvature=top, curvature_along_w=along_w, multiplier=1.0, peak_h=0.9,
                     stability_ratio=0.5, relaxations=relaxations, verdict=verdict)


def test_under_auto_the_advice_blames_the_stiffness_not_the_rate():
    plan = FeedbackPlan(layers={"a": _layer(1.4), "b": _layer(9.0, top=4.0, along_w=2.0)},
                        auto=True, target=6.0)
    assert plan.counts()["stiffness_max"] == 100.0
    advice = plan.advice()
    assert "these metaparameters make its curvature stiff" in advice
    assert "100x" in advice and "--feedback-lr-multiplier" not in advice


def test_at_a_fixed_multiplier_the_advice_is_auto():
    plan = FeedbackPlan(layers={"a": _layer(1.4)}, auto=False)
    assert "--feedback-lr-multiplier auto" in plan.advice()


def test_stiffness_of_a_single_mode_is_one():
    assert stiffness(_layer(9.0, top=2e-3, along_w=2e-3)) == 1.0


def test_the_end_of_a_sweep_says_whether_the_best_trial_is_flagged():
    ok = FeedbackPlan(layers={"a": _layer(9.0)}, auto=True).summary()
    slow = FeedbackPlan(layers={"a": _layer(1.4)}, auto=True).summary()
    line = plan_summary_line([{**ok, "trial": 3, "value": 0.93},
                              {**slow, "trial": 4, "value": 0.81},
                              {**slow, "trial": 5, "value": None}])
    assert line.startswith("B's plan: 2 under-relaxed of 3 trials")
    assert "the best (trial 3, 0.9300) is not among them" in line
    line = plan_summary_line([{**ok, "trial": 3, "value": 0.80},
                              {**slow, "trial": 4, "value": 0.81}])
    assert "the best (trial 4, 0.8100) is under-relaxed" in line
    assert plan_summary_line([{**ok, "trial": 3, "value": 0.8}]) is None


def test_a_run_whose_b_no_regularizer_trains_records_that_the_plan_does_not_apply():
    """Feedback alignment's B is a fixed draw: the run records why there is no plan, and a
    sweep of such runs ends on that reason instead of saying nothing."""
    import trainer

    result = trainer.train(dict(rule="feedback_alignment", arch="mlp", epochs=1,
                                train_subset=128, val_subset=64))
    summary = result.history[-1]["feedback_plan"]["summary"]
    assert summary["verdict"] == "not applicable"
    assert "not learned" in summary["reason"]
    line = plan_summary_line([{**summary, "trial": 0, "value": 0.5}])
    assert line == f"B's plan does not apply: {summary['reason']}"
    mixed = [{**summary, "trial": 0, "value": 0.5},
             {"verdict": "ok", "trial": 1, "value": 0.6}]
    assert plan_summary_line(mixed) is None  # nothing flagged among the planned ones
