"""One definition per concept: `odyssey train`'s help, the study-spec validator, training and the analysis
all draw the variants, datasets (with their metrics), optimizers, init schemes, training settings and the
search-space parameter's scales from the same registries."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from analysis.api import StudyAnalysis
from analysis.space import space_from_spec, to_sampled
from analysis.synthetic import synthetic_study
from sweep.cli.main import cli
from sweep.core.errors import OdysseyError
from sweep.core.settings import INIT_SCHEMES, OPTIMIZERS, SEARCHABLE, TrainConfig, TrainingSettings, settings
from sweep.core.space import Param
from sweep.core.variants import VARIANTS
from sweep.data.registry import DATASETS
from sweep.spec import StudySpec, design_points, parse_spec
from tests.test_spec import _error, _spec

# Options of `odyssey train` that are not training settings: what to load, and the process's threads.
NOT_SETTINGS = {"--dataset", "--data", "--threads", "--help"}
# A spec as `study create` stored it before this refactor (sweep.spec at d387061): it must load unchanged.
OLD_STORED_SPEC: dict[str, Any] = {
    "name": "old", "dataset": {"name": "char", "path": "x.txt"},
    "custom_variants": {"NIG-NOG": {"input_gate": False, "forget_gate": "gate", "output_gate": False,
                                    "input_activation": True, "output_activation": True, "peepholes": True,
                                    "gate_recurrence": False}},
    "variants": ["V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR", "NIG-NOG"],
    "space": {
        "learning_rate": {"type": "float", "scale": "log", "low": 1e-06, "high": 0.01, "value": None},
        "hidden_size": {"type": "int", "scale": "log", "low": 20.0, "high": 200.0, "value": None},
        "momentum": {"type": "float", "scale": "log1m", "low": 0.0, "high": 0.99, "value": None},
        "input_noise": {"type": "float", "scale": "linear", "low": 0.0, "high": 1.0, "value": None},
        "forget_bias": {"type": "float", "scale": "linear", "low": None, "high": None, "value": 1.0},
        "num_layers": {"type": "int", "scale": "linear", "low": 1.0, "high": 3.0, "value": None},
    },
    "trials_per_variant": 4, "design": "random", "seed": 0,
    "training": {"max_epochs": 150, "patience": 15, "batch_size": 1, "optimizer": "sgd", "clip": 5.0,
                 "num_layers": 1, "init": "normal", "init_scale": 0.1, "bptt": 50, "embedding_size": None,
                 "eval_batch_size": None},
    "metric": "bpc", "direction": "minimize",
}  # fmt: skip


def _spec_error(data: dict[str, Any]) -> str:
    """The one-line message of a refused spec, without its `spec x.toml: ` prefix."""
    return _error(data).removeprefix("spec x.toml: ")


# --- odyssey train --help ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_help() -> dict[str, tuple[str, str]]:
    """`odyssey train --help` as {flag: (metavar, help text)}, read on a terminal wide enough for one line
    per option."""
    result = CliRunner().invoke(cli, ["train", "--help"], terminal_width=400, max_content_width=400)
    assert result.exit_code == 0, result.output
    options = {}
    for line in result.output.splitlines():
        match = re.match(r"^\s+(?:-\w, )?(--[\w-]+)(?: (\S.*?))?\s{2,}(.*)$", line)
        if match:
            options[match[1]] = (match[2] or "", match[3])
    return options


def _listed(text: str, before: str) -> list[str]:
    """The comma-separated names after `before` in a help text, up to the end of that sentence."""
    tail = text.split(before, 1)[1]
    return [name.strip() for name in tail.split(".")[0].split(",")]


def test_train_help_lists_every_training_setting_and_nothing_else(
    train_help: dict[str, tuple[str, str]],
) -> None:
    documented = {s.flag: s for s in settings() if s.flag is not None}
    assert set(train_help) == set(documented) | NOT_SETTINGS
    # Every setting of the model is an option, `switches` (a custom variant's table, spec only) aside;
    # the spec's [training] table has nothing odyssey train lacks.
    assert {s.name for s in documented.values()} == set(TrainConfig.model_fields) - {"switches"}
    assert set(TrainingSettings.model_fields) <= {s.name for s in documented.values()}
    for flag, setting in documented.items():
        metavar, text = train_help[flag]
        assert text.startswith(setting.help), (flag, text)
        if setting.default is not None:
            assert f"[default: {setting.default}]" in text, (flag, text)
        if setting.choices is None:
            assert metavar == {int: "INTEGER", float: "FLOAT", str: "TEXT"}[setting.type], (flag, metavar)


def test_train_help_lists_exactly_the_registries(train_help: dict[str, tuple[str, str]]) -> None:
    assert _listed(train_help["--variant"][1], "Cell variant:") == list(VARIANTS)
    assert _listed(train_help["--dataset"][1], "Dataset:") == list(DATASETS)
    assert train_help["--optimizer"][0] == "[" + "|".join(OPTIMIZERS) + "]"
    assert train_help["--init"][0] == "[" + "|".join(INIT_SCHEMES) + "]"
    data_help = train_help["--data"][1]
    for entry in DATASETS.values():
        assert (f"{entry.name}: {entry.path}" in data_help) == (entry.path is not None), entry.name


@pytest.mark.parametrize("flag", ["--optimizer", "--init"])
def test_train_refuses_a_name_outside_the_registry(flag: str) -> None:
    result = CliRunner().invoke(cli, ["train", flag, "bogus", "--dataset", "synthetic"])
    assert result.exit_code == 2 and "Invalid value for '" + flag in result.output


# --- the spec validator --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATASETS))
def test_spec_accepts_every_registered_dataset_with_its_primary_metric(name: str) -> None:
    entry = DATASETS[name]
    dataset = {"name": name, **({"path": "data.txt"} if entry.path_required else {})}
    assert parse_spec(_spec(dataset=dataset)).metric == entry.metric
    for metric in entry.metrics:  # a secondary metric of the dataset may be the objective
        assert parse_spec(_spec(dataset=dataset, metric=metric)).metric == metric
    assert _spec_error(_spec(dataset=dataset, metric="accuracy")) == (
        f"metric 'accuracy' is not one of the {name} dataset's ({', '.join(sorted(entry.metrics))})"
    )
    if entry.path_required:
        assert _spec_error(_spec(dataset={"name": name})) == (
            f"dataset.path is required for the {name!r} dataset"
        )


def test_spec_refuses_an_unregistered_dataset_in_one_line() -> None:
    assert _spec_error(_spec(dataset={"name": "mnist"})) == (
        f"dataset.name: unknown dataset 'mnist' (known: {', '.join(DATASETS)})"
    )


def test_spec_accepts_exactly_the_registered_variants() -> None:
    assert parse_spec(_spec(variants=list(VARIANTS))).variants == VARIANTS
    assert _spec_error(_spec(variants=["V", "LSTMX"])) == (
        f"variants: unknown variant 'LSTMX' (known: {', '.join(VARIANTS)})"
    )


@pytest.mark.parametrize(("setting", "registry"), [("optimizer", OPTIMIZERS), ("init", INIT_SCHEMES)])
def test_spec_and_training_accept_exactly_the_registered_names(setting: str, registry: dict) -> None:
    for name in registry:
        assert getattr(parse_spec(_spec(training={setting: name})).training, setting) == name
        assert getattr(TrainConfig(**{setting: name}), setting) == name
    rule = f"must be one of {', '.join(registry)}, got 'bogus'"
    assert _spec_error(_spec(training={setting: "bogus"})) == f"training.{setting} {rule}"
    with pytest.raises(OdysseyError) as info:
        TrainConfig(**{setting: "bogus"})
    assert str(info.value) == f"{setting} {rule}"


def test_spec_space_accepts_exactly_the_searchable_settings() -> None:
    assert set(SEARCHABLE) <= set(TrainConfig.model_fields)
    for name, kind in SEARCHABLE.items():
        value = 2 if kind == "int" else 0.5
        spec = parse_spec(_spec(space={name: {"type": kind, "value": value}}))
        assert spec.fixed[name] == value
        assert all(point[name] == value for point in design_points(spec))
    message = _spec_error(_spec(space={"max_epochs": {"value": 3}}))
    assert message.startswith("space: unknown hyperparameter 'max_epochs'")
    assert message.endswith(f"(known: {', '.join(SEARCHABLE)})")


def test_spec_training_table_is_the_training_settings_model() -> None:
    assert StudySpec.model_fields["training"].annotation is TrainingSettings
    assert parse_spec(_spec()).training == TrainingSettings()
    defaults = {s.name: s.default for s in settings()}
    assert TrainingSettings().model_dump() == {name: defaults[name] for name in TrainingSettings.model_fields}


# --- the search-space parameter ------------------------------------------------------------------------


def test_old_stored_specs_still_load_unchanged() -> None:
    spec = parse_spec(OLD_STORED_SPEC, stored=True)
    assert spec.normalised() == OLD_STORED_SPEC
    space = space_from_spec(OLD_STORED_SPEC)
    assert space.names == ["learning_rate", "hidden_size", "momentum", "input_noise", "num_layers"]
    assert space.fixed == {"forget_bias": 1.0}
    assert all(space.params[name] == spec.space[name] for name in space.names)


@pytest.mark.parametrize("name", ["learning_rate", "momentum", "input_noise", "hidden_size"])
def test_spec_and_analysis_share_the_scale_transforms(name: str) -> None:
    spec = parse_spec(_spec(trials_per_variant=256, design="sobol"))
    drawn = spec.space[name]
    space = space_from_spec(spec.normalised())
    analysed = space.params[name]
    assert type(analysed) is Param and analysed == drawn  # the one class, the same bounds and scale
    points = pd.DataFrame(design_points(spec))
    np.testing.assert_array_equal(analysed.to_sampled(points[name]), drawn.to_sampled(points[name]))
    # The designs draw uniformly on the axis the analysis works on: every point inside its bounds, and
    # spread evenly over them (a log-scaled parameter analysed on a linear axis would bunch up).
    sampled = to_sampled(points, space)[name].to_numpy()
    lo, hi = analysed.bounds
    assert lo - 1e-12 <= sampled.min() and sampled.max() <= hi + 1e-12
    if drawn.type == "float":
        counts = np.histogram(sampled, bins=4, range=(lo, hi))[0]
        assert counts.min() >= 56, counts
    unit = np.linspace(0.0, 1.0, 5)
    tolerance = 1e-2 if drawn.type == "int" else 1e-12  # an int parameter is rounded to whole numbers
    np.testing.assert_allclose(analysed.to_sampled(drawn.from_unit(unit)), lo + unit * (hi - lo),
                               atol=tolerance)


# --- datasets and their metrics ------------------------------------------------------------------------


def _load(name: str, tmp_path: Path) -> Any:
    from sweep.data.base import load_dataset

    if name == "ptb":
        for split in ("train", "valid", "test"):
            (tmp_path / f"ptb.{split}.txt").write_text("the cat sat\non the mat\n")
        return load_dataset("ptb", path=str(tmp_path))
    if name == "char":
        (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog " * 20)
        return load_dataset("char", path=str(tmp_path / "text.txt"))
    if name == "synthetic":
        return load_dataset("synthetic", n_train=2, n_valid=2, n_test=2)
    return load_dataset(name)


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_dataset_reports_the_registry_metrics(name: str, tmp_path: Path) -> None:
    dataset = _load(name, tmp_path)
    entry = DATASETS[name]
    assert dataset.name == name and dataset.metrics == entry.metrics and dataset.metric == entry.metric
    assert tuple(dataset.summarize(1.0)) == entry.metrics  # what every epoch reports, primary first
    assert f"metric {entry.metric}" in dataset.describe()


def test_unknown_dataset_names_the_registry() -> None:
    from sweep.data.base import load_dataset

    with pytest.raises(OdysseyError) as info:
        load_dataset("timit")
    assert str(info.value) == f"unknown dataset 'timit'; known datasets: {', '.join(DATASETS)}"


def test_analysis_labels_with_the_datasets_metric_and_reads_the_spec_space() -> None:
    stored = parse_spec(_spec(variants=["V", "NFG"])).normalised()
    assert stored["metric"] == DATASETS["synthetic"].metric
    data = dataclasses.replace(synthetic_study(variants=("V", "NFG"), trials_per_variant=8), spec=stored)
    analysis = StudyAnalysis(data, n_trees=4)
    assert analysis.metric == DATASETS["synthetic"].metric
    varied = {k: p for k, p in parse_spec(stored, stored=True).space.items() if not p.fixed}
    assert analysis.space.params == varied


def test_registries_spec_and_train_help_need_no_torch() -> None:
    """The spec (all its checks included) and `odyssey train --help` read the registries without torch."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from sweep.cli.main import cli\n"
        "from sweep.spec import parse_spec\n"
        "parse_spec({'name': 's', 'dataset': {'name': 'jsb'}, 'trials_per_variant': 2,\n"
        "            'space': {'clip': {'low': 1.0, 'high': 5.0}}, 'training': {'init': 'xavier'}})\n"
        "assert CliRunner().invoke(cli, ['train', '--help']).exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
