"""Finding the trials a dead driver left running, in a Ray folder laid out as Tune writes it
(the fault tests run the real thing; this covers the choices: recorded, superseded, URIs)."""

import json

import pytest

from search.continuing import unfinished_trials


def _trial(experiment, name, trial_id, config, checkpoints=(1,)):
    folder = experiment / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(config))
    (folder / "result.json").write_text(json.dumps({"epoch": 1, "trial_id": trial_id}) + "\n")
    for index in checkpoints:
        (folder / f"checkpoint_{index:06d}").mkdir()
        (folder / f"checkpoint_{index:06d}" / "state.pt").write_bytes(b"x")
    return folder


@pytest.mark.parametrize("as_uri", [False, True])
def test_unfinished_trials_are_the_unrecorded_latest_continuations(tmp_path, as_uri):
    sweep = "s-20261124-040100-281"
    first = tmp_path / sweep
    _trial(first, "run_trial_a_1", "a", {"lr": 0.1}, checkpoints=(0, 1))
    _trial(first, "run_trial_b_2", "b", {"lr": 0.2})  # recorded: finished
    _trial(first, "run_trial_c_3", "c", {"lr": 0.3}, checkpoints=())  # never checkpointed
    _trial(first, "run_trial_d_4", "d", {"lr": 0.4})  # continued below, further along
    later = tmp_path / f"{sweep}-continued-041500"
    _trial(later, "continue_trial_e_1", "e",
           {"run": {"sampled": {"lr": 0.4}, "restore": "x", "origin": f"{sweep}/d"}})
    _trial(tmp_path / f"{sweep}9", "run_trial_f_1", "f", {"lr": 0.5})  # another sweep's id
    root = f"file://{tmp_path}" if as_uri else str(tmp_path)
    found = unfinished_trials(root, sweep, recorded={f"{sweep}/b"})
    assert {u.ray_id: u.params for u in found} == {
        f"{sweep}/a": {"lr": 0.1}, f"{later.name}/e": {"lr": 0.4}}
    by_id = {u.ray_id: u.checkpoint for u in found}
    expected = f"{tmp_path}/{sweep}/run_trial_a_1/checkpoint_000001"
    assert by_id[f"{sweep}/a"] == (f"file://{expected}" if as_uri else expected)


def test_a_missing_ray_folder_has_nothing_unfinished(tmp_path):
    assert unfinished_trials(str(tmp_path / "none"), "s", set()) == []
