"""Study specs: TOML parsing, validation messages, the default space and the designs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sweep.core.errors import OdysseyError
from sweep.nn.cells import GREFF_VARIANTS, VARIANTS
from sweep.spec import design_points, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _spec(**extra: object) -> dict[str, object]:
    return {"name": "s", "dataset": {"name": "synthetic"}, "trials_per_variant": 8, **extra}


def _error(data: dict[str, object]) -> str:
    with pytest.raises(OdysseyError) as info:
        parse_spec(data, "x.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("spec x.toml: ")
    return message


def test_defaults_are_the_papers_space() -> None:
    spec = parse_spec(_spec())
    assert spec.variants == GREFF_VARIANTS
    assert spec.metric == "mse" and spec.direction == "minimize" and spec.design == "random"
    lr, hidden, momentum = spec.space["learning_rate"], spec.space["hidden_size"], spec.space["momentum"]
    assert (lr.scale, lr.low, lr.high) == ("log", 1e-6, 1e-2)
    assert (hidden.type, hidden.scale, hidden.low, hidden.high) == ("int", "log", 20, 200)
    assert (momentum.scale, momentum.low, momentum.high) == ("log1m", 0.0, 0.99)
    assert spec.space["input_noise"].scale == "linear"
    assert spec.training.max_epochs == 150 and spec.training.patience == 15


def test_partial_entry_keeps_default_fields_and_value_fixes() -> None:
    spec = parse_spec(_spec(space={"momentum": {"high": 0.9}, "forget_bias": {"value": 1.0}}))
    assert spec.space["momentum"].scale == "log1m" and spec.space["momentum"].high == 0.9
    assert spec.fixed == {"forget_bias": 1.0}
    assert "forget_bias" not in spec.searched


def test_normalised_form_round_trips() -> None:
    spec = parse_spec(_spec(variants=["V", "GRU"], design="sobol", seed=3))
    stored = spec.normalised()
    assert stored["variants"] == ["V", "GRU"]
    assert set(stored) >= {"space", "metric", "direction", "dataset", "variants", "design"}
    assert parse_spec(stored, stored=True) == spec


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"space": {"learning_rate": {"low": 0.0, "high": 1e-2}}},
         "space.learning_rate.low must be > 0 for a log scale"),
        ({"space": {"momentum": {"low": 0.0, "high": 1.0}}}, "space.momentum.high must be < 1"),
        ({"space": {"input_noise": {"low": 1.0, "high": 0.5}}}, "space.input_noise.high must be > low"),
        ({"space": {"hidden_size": {"low": 2.5, "high": 9}}}, "space.hidden_size.low and high must be whole"),
        ({"space": {"lr": {"low": 1, "high": 2}}}, "unknown hyperparameter 'lr'"),
        ({"variants": ["V", "LSTMX"]}, "unknown variant 'LSTMX' (known: V, NIG"),
        ({"dataset": {"name": "mnist"}}, "unknown dataset 'mnist' (known: jsb, ptb, char, synthetic)"),
        ({"dataset": {"name": "char"}}, "dataset.path is required"),
        ({"design": "grid"}, "design: input should be 'random', 'sobol' or 'tpe'"),
        ({"training": {"max_epochs": 0}}, "training.max_epochs must be >= 1, got 0"),
        ({"trials_per_variant": 0}, "trials_per_variant"),
        ({"desing": "sobol"}, "desing is not a known field (did you mean design?)"),
        # The training rules of `odyssey train`, applied to every fixed value and range end (issue 10).
        ({"space": {"input_noise": {"low": -0.1, "high": 0.5}}},
         "space.input_noise.low must be >= 0, got -0.1"),
        ({"space": {"input_noise": {"value": -1.0}}}, "space.input_noise.value must be >= 0, got -1.0"),
        ({"space": {"learning_rate": {"scale": "linear", "low": -0.01, "high": 0.01}}},
         "space.learning_rate.low must be a positive number, got -0.01"),
        ({"space": {"momentum": {"scale": "linear", "low": 0.5, "high": 1.5}}},
         "space.momentum.high must be in [0, 1), got 1.5"),
        ({"space": {"momentum": {"value": 1.2}}}, "space.momentum.value must be in [0, 1), got 1.2"),
        ({"space": {"num_layers": {"value": 0}}}, "space.num_layers.value must be >= 1, got 0"),
        ({"training": {"num_layers": 0}}, "training.num_layers must be >= 1, got 0"),
        ({"space": {"hidden_size": {"scale": "linear", "low": 0, "high": 50}}},
         "space.hidden_size.low must be >= 1, got 0"),
        ({"training": {"clip": 0.0}}, "training.clip must be a positive number, got 0.0"),
        ({"space": {"clip": {"low": -1.0, "high": 5.0}}},
         "space.clip.low must be a positive number, got -1.0"),
        ({"training": {"init_scale": 0.0}}, "training.init_scale must be a positive number, got 0.0"),
        ({"space": {"init_scale": {"value": -0.1}}},
         "space.init_scale.value must be a positive number, got -0.1"),
        ({"training": {"optimizer": "rmsprop"}},
         "training.optimizer must be one of sgd, adam, got 'rmsprop'"),
        ({"variants": []}, "variants: must name at least one variant"),
        ({"space": {"learning_rat": {"low": 1e-4, "high": 1e-2}}},
         "unknown hyperparameter 'learning_rat' (did you mean learning_rate?)"),
        ({"space": {"momentum": {"hihg": 0.9}}},
         "space.momentum.hihg is not a known field (did you mean high?)"),
        ({"training": {"max_epoch": 5}},
         "training.max_epoch is not a known field (did you mean max_epochs?)"),
        ({"training": {"learning_rate": 0.1}},
         "training.learning_rate is a hyperparameter: set it in [space.learning_rate] (value = ... "
         "to fix it, or low/high to search it)"),
        # the table's key names a space entry (a Param's `name` is never stored)
        ({"space": {"momentum": {"name": "m", "high": 0.9}}}, "space.momentum.name is not a known field"),
        ({"training": {"max_epochs": "x"}}, "training.max_epochs must be a whole number, got 'x'"),
        ({"metric": "accuracy"}, "metric 'accuracy' is not one of the synthetic dataset's (mse)"),
        ({"direction": "maximize"}, "direction 'maximize' contradicts the metric 'mse': every metric of the "
                                    "synthetic dataset is lower-is-better"),
    ],
)
def test_invalid_specs_name_the_field(change: dict[str, object], expected: str) -> None:
    assert expected in _error(_spec(**change))


def test_missing_required_field() -> None:
    assert "trials_per_variant is required" in _error({"name": "s", "dataset": {"name": "synthetic"}})


def test_misspelt_key_is_named_with_the_nearest_known_one() -> None:
    # Not "trials_per_variant is required": the unknown key is the user's mistake.
    message = _error({"name": "s", "dataset": {"name": "synthetic"}, "trials_per_varient": 8})
    assert message == ("spec x.toml: trials_per_varient is not a known field "
                       "(did you mean trials_per_variant?)")


def test_training_rules_are_the_ones_odyssey_train_applies() -> None:
    # One rule set: the spec's message is TrainConfig's, located in the spec.
    from sweep.training import TrainConfig

    with pytest.raises(OdysseyError) as train_error:
        TrainConfig(variant="V", hidden_size=10, learning_rate=1e-3, input_noise=-0.5)
    spec_error = _error(_spec(space={"input_noise": {"value": -0.5}}))
    assert str(train_error.value) == "input_noise must be >= 0, got -0.5"
    assert spec_error == "spec x.toml: space.input_noise.value must be >= 0, got -0.5"


def test_stored_spec_is_not_checked_again() -> None:
    # A stored spec passed at creation; reading it back (analysis, workers) must not import torch.
    stored = parse_spec(_spec()).normalised()
    assert parse_spec(stored, stored=True).training.init_scale == 0.1


def test_load_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(OdysseyError, match="no such file"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x\n")
    with pytest.raises(OdysseyError, match=r"bad.toml: invalid TOML"):
        load_spec(bad)


def test_random_and_sobol_designs_cover_the_scales() -> None:
    for design in ("random", "sobol"):
        spec = parse_spec(_spec(design=design, trials_per_variant=64, seed=5))
        points = design_points(spec)
        assert len(points) == 64
        lr = np.array([p["learning_rate"] for p in points])
        hidden = [p["hidden_size"] for p in points]
        momentum = np.array([p["momentum"] for p in points])
        assert lr.min() >= 1e-6 and lr.max() <= 1e-2
        # log scale: about half the points below the geometric middle 1e-4
        assert 0.3 < np.mean(lr < 1e-4) < 0.7
        assert all(isinstance(h, int) and 20 <= h <= 200 for h in hidden)
        # log1m: log10(1 - m) uniform on [-2, 0], so about half have momentum above 0.9
        assert momentum.min() >= 0.0 and momentum.max() <= 0.99
        assert 0.3 < np.mean(momentum > 0.9) < 0.7
        assert design_points(spec) == points  # the seed fixes the design


def test_sobol_is_more_even_than_random() -> None:
    def spread(design: str) -> float:
        spec = parse_spec(_spec(design=design, trials_per_variant=32, seed=0,
                                space={"input_noise": {"scale": "linear", "low": 0.0, "high": 1.0}}))
        xs = np.array([p["input_noise"] for p in design_points(spec)])
        counts = np.histogram(xs, bins=8, range=(0, 1))[0]
        return float(counts.max() - counts.min())

    assert spread("sobol") <= 1
    assert spread("sobol") < spread("random")


def test_fixed_values_appear_in_every_point() -> None:
    spec = parse_spec(_spec(space={"hidden_size": {"value": 12}}, trials_per_variant=3))
    assert [p["hidden_size"] for p in design_points(spec)] == [12, 12, 12]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name and set(spec.variants) <= set(VARIANTS)
    assert all(math.isfinite(v) for p in design_points(spec)[:3] for v in p.values())


def test_greff_example_is_the_papers_protocol() -> None:
    spec = load_spec(EXAMPLES / "jsb-greff.toml")
    assert spec.variants == GREFF_VARIANTS and spec.trials_per_variant == 200
    assert spec.training.max_epochs == 150 and spec.training.patience == 15
    assert spec.dataset.name == "jsb" and spec.design == "random"


def test_variant_shorthands() -> None:
    assert parse_spec(_spec(variants="greff")).variants == GREFF_VARIANTS
    assert parse_spec(_spec(variants="all")).variants == VARIANTS
    assert "lists a variant twice" in _error(_spec(variants=["V", "V"]))


@pytest.mark.parametrize(("toml", "expected"), [
    ("trials_per_varient = 4", "trials_per_varient is not a known field (did you mean trials_per_variant?)"),
    ("trials_per_variant = 4\nvariants = []", "variants: must name at least one variant"),
    ("trials_per_variant = 4\n[space.momentum]\nvalue = 1.5", "space.momentum.value must be in [0, 1)"),
])
def test_study_create_refuses_a_spec_that_cannot_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, expected: str
) -> None:
    from sweep.cli.main import main

    spec = tmp_path / "bad.toml"
    spec.write_text(f'name = "bad"\ndataset = {{ name = "synthetic" }}\n{toml}\n')
    db = tmp_path / "results.db"
    with pytest.raises(SystemExit) as info:
        main(["study", "create", str(spec), "--storage", f"sqlite:///{db}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(lines) == 1 and lines[0].startswith(f"error: spec {spec}: "), lines
    assert expected in lines[0] and not db.exists()  # refused before any database is touched
