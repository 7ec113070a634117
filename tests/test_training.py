"""Models and training: shapes, noise, determinism, early stopping, divergence, devices, the CLI, and a
short JSB run that must beat the trivial per-pitch-frequency baseline."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweep import training
from sweep.cli.main import main
from sweep.core.errors import OdysseyError
from sweep.data.base import load_dataset
from sweep.data.music import frequency_baseline
from sweep.data.synthetic import SumDataset
from sweep.nn.models import SequenceModel
from sweep.training import EpochReport, TrainConfig, build_model, make_optimizer, resolve_device, train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", n_train=64, n_valid=32, n_test=32)


def quick(**overrides) -> TrainConfig:
    settings = dict(
        variant="V",
        hidden_size=8,
        learning_rate=1e-2,
        optimizer="adam",
        batch_size=8,
        max_epochs=4,
        patience=4,
    )
    return TrainConfig(**(settings | overrides))


# --- the model -----------------------------------------------------------------------------------------


def test_model_shapes_for_features_and_tokens():
    model = SequenceModel("CIFG", 3, 5, 2)
    out, state = model(torch.randn(4, 6, 3), torch.tensor([6, 2, 1, 6]))
    assert out.shape == (4, 6, 2) and state[0].shape == (1, 4, 5)
    lm = SequenceModel("NP", 11, 5, 11, vocab_size=11, embedding_size=7, num_layers=2)
    out, _ = lm(torch.randint(0, 11, (2, 9)))
    assert out.shape == (2, 9, 11) and lm.embedding.embedding_dim == 7
    assert lm.n_params == sum(p.numel() for p in lm.parameters())


def test_input_noise_only_while_training():
    model = SequenceModel("V", 2, 4, 1, input_noise=0.5)
    x = torch.randn(3, 5, 2)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])
    quiet = SequenceModel("V", 2, 4, 1, input_noise=0.0).train()
    assert torch.equal(quiet(x)[0], quiet(x)[0])


def test_build_model_is_seeded_and_leaves_the_global_rng_alone(synthetic):
    before = torch.random.get_rng_state()
    a, b = build_model(quick(seed=5), synthetic), build_model(quick(seed=5), synthetic)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = build_model(quick(seed=6), synthetic)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_sgd_is_nesterov_with_lr_scaled_by_one_minus_momentum(synthetic):
    model = build_model(quick(), synthetic)
    sgd = make_optimizer(quick(optimizer="sgd", learning_rate=0.5, momentum=0.9), model.parameters())
    group = sgd.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["lr"] == pytest.approx(0.05)
    adam = make_optimizer(quick(learning_rate=0.5, momentum=0.8), model.parameters())
    assert adam.param_groups[0]["lr"] == 0.5 and adam.param_groups[0]["betas"][0] == 0.8


# --- training ------------------------------------------------------------------------------------------


def test_training_learns_and_reports_every_epoch(synthetic):
    reports: list[EpochReport] = []
    result = train(quick(max_epochs=5), synthetic, on_epoch=reports.append)
    assert result.status == "complete" and [r.epoch for r in reports] == [1, 2, 3, 4, 5]
    assert result.history == reports
    assert reports[-1].valid_metric < reports[0].valid_metric / 2
    assert set(reports[0].metrics) == {"valid_mse", "test_mse"}
    assert reports[0].metrics["valid_mse"] == reports[0].valid_metric
    best = min(reports, key=lambda r: r.valid_metric)
    assert (result.best_epoch, result.best_valid, result.best_test) == (
        best.epoch,
        best.valid_metric,
        best.test_metric,
    )
    assert (result.final_valid, result.final_test) == (reports[-1].valid_metric, reports[-1].test_metric)
    assert result.n_params == build_model(quick(), synthetic).n_params
    assert all(r.seconds > 0 for r in reports) and result.seconds >= sum(r.seconds for r in reports)


def test_same_seed_same_numbers(synthetic):
    config = quick(optimizer="sgd", learning_rate=0.5, input_noise=0.1, max_epochs=3)
    a, b = train(config, synthetic), train(config, synthetic)
    assert [r.metrics for r in a.history] == [r.metrics for r in b.history]
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    c = train(quick(optimizer="sgd", learning_rate=0.5, input_noise=0.1, max_epochs=3, seed=1), synthetic)
    assert [r.metrics for r in c.history] != [r.metrics for r in a.history]


def test_early_stopping_after_patience_epochs(synthetic, monkeypatch):
    # Script the validation metric: best at epoch 3, then three epochs without improvement.
    scripted = iter([5.0, 4.0, 3.0, 3.5, 3.0, 3.2, 1.0, 1.0])
    real = training.evaluate

    def fake_evaluate(model, dataset, split, config):
        metrics = real(model, dataset, split, config)
        return {"mse": next(scripted)} if split == "valid" else metrics

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    result = train(quick(max_epochs=20, patience=3), synthetic)
    assert result.status == "complete"
    assert result.epochs == 6 and result.best_epoch == 3 and result.best_valid == 3.0
    assert result.best_test == result.history[2].test_metric


def test_huge_learning_rate_diverges_with_finite_metrics(synthetic):
    reports: list[EpochReport] = []
    result = train(
        quick(optimizer="sgd", learning_rate=1e4, max_epochs=10), synthetic, on_epoch=reports.append
    )
    assert result.status == "diverged" and result.epochs < 10
    for value in (result.best_valid, result.best_test, result.final_valid, result.final_test):
        assert math.isfinite(value)
    assert reports == result.history and all(math.isfinite(v) for v in reports[-1].metrics.values())
    # it diverged within its first epoch: the untrained model is reported as epoch 0
    untrained = train(quick(max_epochs=1), synthetic)
    assert [r.epoch for r in reports] == [0] and math.isfinite(reports[0].train_loss)
    assert reports[0].valid_metric > untrained.best_valid


def test_broken_initialisation_is_reported_as_diverged(synthetic):
    result = train(quick(init_scale=1e30, max_epochs=3), synthetic)
    assert result.status == "diverged" and result.epochs == 0


def test_divergence_mid_run_keeps_the_last_finite_epoch():
    class Breaks(SumDataset):
        """Trains normally for one epoch (4 batches), then the training loss turns NaN."""

        calls = 0

        def loss(self, outputs, batch):
            total, n = super().loss(outputs, batch)
            if torch.is_grad_enabled():
                Breaks.calls += 1
                if Breaks.calls > 4:
                    total = total * math.nan
            return total, n

    base = load_dataset("synthetic", n_train=32, n_valid=8, n_test=8)
    data = Breaks(base.train, base.valid, base.test)
    result = train(quick(max_epochs=5), data)
    assert result.status == "diverged" and result.epochs == 1 and len(result.history) == 1
    assert result.final_valid == result.history[0].valid_metric and math.isfinite(result.final_valid)


def test_gradient_clipping_tames_a_large_step(synthetic):
    config = quick(optimizer="sgd", learning_rate=50.0, momentum=0.0, max_epochs=3)
    assert train(config, synthetic).status == "diverged"
    clipped = train(
        quick(optimizer="sgd", learning_rate=50.0, momentum=0.0, max_epochs=3, clip=0.1), synthetic
    )
    assert clipped.status == "complete" and clipped.epochs == 3


def test_callback_may_stop_the_run(synthetic):
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(report):
        seen.append(report.epoch)
        if report.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(quick(max_epochs=10), synthetic, on_epoch=on_epoch)
    assert seen == [1, 2]


def test_token_stream_training_carries_state_across_chunks(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcab" * 120)  # 600 characters, an easy periodic text
    data = load_dataset("char", path=path)
    progress = []
    result = train(
        quick(hidden_size=16, batch_size=4, bptt=10, max_epochs=3, learning_rate=3e-2),
        data,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    first, last = result.history[0], result.history[-1]
    assert last.metrics["valid_bpc"] < first.metrics["valid_bpc"] < math.log2(3) + 0.5
    assert last.metrics["valid_bpc"] == pytest.approx(math.log2(last.metrics["valid_perplexity"]))
    assert last.metrics["valid_nll"] == pytest.approx(last.metrics["valid_bpc"] * math.log(2))
    # progress counts every predicted training character each epoch
    assert progress[-1] == (data.train.n_targets, data.train.n_targets)


def test_chunked_evaluation_equals_one_pass(tmp_path):
    from sweep.nn.cells import detach_state

    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog " * 3)
    data = load_dataset("char", path=path, split=(0.8, 0.1, 0.1))
    model = build_model(quick(), data).eval()
    batch = next(data.batches("train", 3))
    with torch.no_grad():
        whole, n = data.loss(model(batch.inputs, batch.lengths)[0], batch)
        total, state = 0.0, None
        for chunk in batch.chunks(7):  # the last chunks have rows of length 0
            out, state = training._run(model, chunk, state, torch.device("cpu"))
            state = detach_state(state)
            total += float(data.loss(out, chunk)[0])
    assert total == pytest.approx(float(whole), rel=1e-5) and n == data.train.n_targets


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"variant": "LSTMX"}, "unknown variant 'LSTMX'; expected one of V, "),
        ({"init_scale": 0.0}, "init_scale must be a positive number"),
        ({"input_noise": -0.1}, "input_noise must be >= 0"),
        ({"batch_size": 0}, "batch_size"),
        ({"clip": 0.0}, "clip"),
        ({"device": "tpu"}, "device"),
        ({"device": "cuda:99"}, "cuda:99"),
        ({"device": "cuda:x"}, "invalid device"),
    ],
)
def test_bad_config_is_a_user_error(synthetic, overrides, message):
    with pytest.raises(OdysseyError, match=message):
        train(quick(**overrides), synthetic)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(OdysseyError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(synthetic):
    result = train(quick(device="cuda:0", max_epochs=2), synthetic)
    assert result.status == "complete" and math.isfinite(result.best_valid)


def test_short_jsb_run_beats_the_frequency_baseline():
    data = load_dataset("jsb")
    config = TrainConfig(variant="V", hidden_size=100, learning_rate=1e-2, optimizer="adam", batch_size=4,
                         max_epochs=5, patience=5)
    result = train(config, data)
    baseline = frequency_baseline(data)
    assert 10.0 < baseline < 12.0  # predicting each pitch's training frequency: about 11.1 nats a frame
    assert result.status == "complete" and result.best_test < baseline - 1.0


# --- the CLI -------------------------------------------------------------------------------------------


def test_cli_train_prints_epochs_and_summary(capsys):
    args = ["train", "--dataset", "synthetic", "--hidden", "8", "--lr", "1e-2", "--optimizer", "adam"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--epochs", "2", "--batch-size", "16", "--seed", "3"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "epoch   1" in out and "epoch   2" in out and "valid_mse" in out
    for label in (
        "status",
        "complete",
        "best epoch",
        "best valid mse",
        "best test mse",
        "parameters",
        "seconds",
    ):
        assert label in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "ptb", "--data", "/nonexistent/dir"], "error: ptb: /nonexistent/dir not found"),
        (["--variant", "XYZ", "--dataset", "synthetic"],
         "error: unknown variant 'XYZ'; expected one of V, NIG,"),
        (["--device", "cuda:77", "--dataset", "synthetic"], "error: device 'cuda:77'"),
        (["--dataset", "synthetic", "--lr", "0"], "error: --lr must be a positive number, got 0.0"),
        (["--dataset", "synthetic", "--epochs", "0"], "error: --epochs must be >= 1, got 0"),
        (["--dataset", "synthetic", "--momentum", "1"], "error: --momentum must be in [0, 1), got 1.0"),
    ],
)
def test_cli_user_errors_exit_1(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_cli_in_a_subprocess_reports_one_line_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.cli.main", "train", "--dataset", "timit"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "error: unknown dataset 'timit'; known datasets: jsb, ptb, char, synthetic\n"
