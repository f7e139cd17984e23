"""The catalogue: one registry type, rules discovered from their files, spaces derived."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import catalogue
import spaces
from catalogue.errors import UnknownName, UsageError
from catalogue.registry import Registry
from procs import cli

ROOT = Path(__file__).resolve().parents[1]


def test_registry_refuses_duplicates_and_lists_valid_names():
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2)
    reg.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 3)
    with pytest.raises(UnknownName, match=r"^unknown widget 'c'; valid: a, b$"):
        reg.get("c")
    assert reg.names() == ["b", "a"] and "a" in reg and len(reg) == 2
    assert issubclass(UnknownName, UsageError)


def test_registry_discovers_once_on_first_read():
    calls = []
    reg: Registry[int] = Registry("thing", discover=lambda: (calls.append(1),
                                                             reg.register("x", 1)))
    assert calls == []
    assert reg.get("x") == 1 and reg.names() == ["x"] and calls == [1]


@pytest.mark.parametrize("registry", ["rules", "architectures", "datasets", "spaces"])
def test_every_registry_refuses_a_duplicate(registry):
    import trainer.datasets as data
    from catalogue.architectures import ARCHITECTURES
    from catalogue.rule import RULES

    reg = {"rules": RULES, "architectures": ARCHITECTURES, "datasets": data.DATASETS,
           "spaces": spaces.SPACES}[registry]
    name = reg.names()[0]
    with pytest.raises(ValueError, match="already registered"):
        reg.register(name, reg.get(name))


@pytest.mark.slow
def test_a_rule_is_one_new_file(tmp_path, monkeypatch):
    """Drop a rule module into catalogue/rules/: list_rules(), its derived space, the trainer
    and `creditsweep rules` all see it, with nothing listed anywhere else. The package is a
    copy under tmp_path, first on the path of the processes that read it: the source tree is
    never written (a run of the suite beside it would see the probe rule)."""
    name = f"probe_rule_{uuid.uuid4().hex[:8]}"
    shutil.copytree(ROOT / "catalogue", tmp_path / "catalogue",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    module = tmp_path / "catalogue" / "rules" / f"{name}.py"
    module.write_text(textwrap.dedent(f"""
        from catalogue.rule import Rule, register_rule

        register_rule(Rule(
            name="{name}", summary="a probe: decay + self", reference="this test",
            mechanism="learned", terms={{"decay": "alpha", "self": "beta"}},
            defaults={{"alpha": 1e-3, "beta": 1e-3}}, local=False,
            search_ranges={{"beta": (1e-4, 1e-1)}}))
    """))
    probe = textwrap.dedent(f"""
        import json, catalogue, spaces, trainer
        space = spaces.default_space("{name}")
        result = trainer.train(dict(rule="{name}", arch="mlp", epochs=1,
                                    max_steps_per_epoch=3))
        print(json.dumps({{"rules": catalogue.list_rules(), "space": space.to_dict(),
                           "status": result.status, "converted": result.converted_layers,
                           "catalogue": catalogue.__file__}}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["catalogue"] == str(tmp_path / "catalogue" / "__init__.py")  # the copy
    assert name in seen["rules"]
    assert seen["space"]["params"] == {
        "alpha": {"low": 1e-6, "high": 10.0, "log": True},
        "beta": {"low": 1e-4, "high": 0.1, "log": True}}
    assert seen["status"] == "completed" and seen["converted"] == 3
    listed = subprocess.run(cli("rules", "--format", "json"), capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    row = next(r for r in json.loads(listed.stdout) if r["rule"] == name)
    assert row["regularizer"] == "alpha*decay + beta*self" and row["reference"] == "this test"


def test_rule_declarations_are_checked():
    from catalogue.rule import Rule

    with pytest.raises(ValueError, match="unknown primitives"):
        Rule("x", "", "", "learned", terms={"decoy": "alpha"}, defaults={"alpha": 1.0})
    with pytest.raises(ValueError, match="defaults must cover exactly"):
        Rule("x", "", "", "learned", terms={"decay": "alpha"}, defaults={})
    with pytest.raises(ValueError, match="non-local primitive"):
        Rule("x", "", "", "learned", terms={"self": "beta"}, defaults={"beta": 1.0}, local=True)
    with pytest.raises(ValueError, match="only a learned B"):
        Rule("x", "", "", "fixed", terms={"decay": "alpha"}, defaults={"alpha": 1.0})


def test_spaces_and_report_labels_come_from_the_catalogue():
    from search.reports import parameter_label

    for name in catalogue.list_rules():
        rule = catalogue.rule_declaration(name)
        space = spaces.default_space(name)
        assert tuple(space.params) == rule.metaparameters
        assert set(space.known) == set(rule.metaparameters) | set(catalogue.tunable_options())
    assert parameter_label("information_alignment", "beta") == "weight of null"
    assert parameter_label("weight_mirror", "sigma") == "input-noise std"
    assert parameter_label("weight_mirror", "lr") == "peak learning rate of W"
    assert parameter_label("weight_mirror", "nonsense") == "parameter"


def test_bounds_outside_a_parameters_valid_range_are_refused():
    with pytest.raises(spaces.SpaceError, match="--space alpha: -1 is out of range"):
        spaces.apply_overrides(spaces.default_space("weight_mirror"), ["alpha=-1:1:linear"])
    with pytest.raises(spaces.SpaceError, match="--space momentum: 2 is out of range"):
        spaces.apply_overrides(spaces.default_space("weight_mirror"),
                               ["momentum=0.5:2:linear"])
    with pytest.raises(spaces.SpaceError, match="--fix sigma: 0 is out of range"):
        spaces.apply_overrides(spaces.default_space("weight_mirror"), [], ["sigma=0"])


def test_cifar_and_digits_honour_image_size(tmp_path):
    import trainer
    from test_data import _write_cifar

    _write_cifar(tmp_path)
    data = trainer.load_dataset("cifar10", batch_size=4, data_dir=str(tmp_path), image_size=16)
    assert data.image_size == 16 and next(iter(data.val.batches(0)))[0].shape[-2:] == (16, 16)
    digits = trainer.load_dataset("digits", batch_size=4, image_size=28)
    assert digits.image_size == 28
    assert next(iter(digits.train.batches(0)))[0].shape[1:] == (1, 28, 28)


def test_a_mechanism_names_the_families_it_trains_and_why_before_anything_runs():
    from catalogue.mechanism import MechanismDeclaration

    narrow = MechanismDeclaration(
        "m", "test", update="model", families=("mlp", "lenet"), families_why="it is sequential",
        option_families=(("prediction", "strict", ("mlp",), "strict needs an MLP"),))
    assert narrow.refusal("r", "mlp4", "mlp", {"prediction": "strict"}) is None
    assert narrow.refusal("r", "lenet", "lenet", {"prediction": "fixed"}) is None
    assert narrow.refusal("r", "resnet8", "cifar_resnet", {}) == (
        "r trains mlp, lenet models, not resnet8: it is sequential")
    assert narrow.refusal("r", "lenet", "lenet", {"prediction": "strict"}) == (
        "r with prediction=strict trains mlp models, not lenet: strict needs an MLP")
    assert MechanismDeclaration("any", "test").refusal("r", "resnet8", "cifar_resnet", {}) is None
