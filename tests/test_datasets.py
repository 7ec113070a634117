"""Datasets: split sizes, batching and padding, the losses and metrics on hand-computed cases, bad files."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from sweep.core.errors import OdysseyError
from sweep.data.base import Batch, SequenceSplit, StreamSplit, load_dataset
from sweep.data.music import frequency_baseline, from_chorales
from tests.shared import shared_path

torch.set_num_threads(1)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def tiny_chorales() -> dict:
    # Each split: one chorale of 3 frames (2 predicted frames) and one of 2 frames (1 predicted frame).
    return {
        "train": [[[60], [60, 64], [67]], [[60], [64]]],
        "valid": [[[62], [62]], [[60], [60], [60]]],
        "test": [[[21, 108], [60]], [[60], [60]]],
    }


# --- JSB Chorales -------------------------------------------------------------------------------------


def test_jsb_packaged_copy_matches_the_paper_splits():
    data = load_dataset("jsb")
    assert (len(data.train), len(data.valid), len(data.test)) == (229, 76, 77)
    assert (data.input_size, data.output_size, data.metric) == (88, 88, "nll")
    shared = json.loads((shared_path("data") / "jsb_chorales.json").read_text())["splits"]
    # the packaged copy holds exactly the shared data: same number of predicted frames per split
    for split in ("train", "valid", "test"):
        assert data.split(split).n_targets == sum(len(c) - 1 for c in shared[split])
    inputs, targets = data.train.sequences[0]
    first = shared["train"][0]
    assert torch.nonzero(inputs[0]).flatten().tolist() == [p - 21 for p in first[0]]
    assert torch.nonzero(targets[0]).flatten().tolist() == [p - 21 for p in first[1]]
    assert torch.equal(inputs[1:], targets[:-1])  # input frame t, target frame t + 1


def test_jsb_bernoulli_nll_by_hand(tmp_path):
    data = load_dataset("jsb", path=write_json(tmp_path / "tiny.json", {"splits": tiny_chorales()}))
    batch = next(data.batches("train", 2))
    assert batch.lengths.tolist() == [2, 1]
    logits = torch.zeros(2, 2, 88)
    logits[0, 0, 60 - 21] = 2.0  # predicts pitch 60 at frame 1; the target frame is {60, 64}
    logits[0, 1, 67 - 21] = -1.0  # target frame {67}
    logits[1, 1] = 1e6  # padding: must not count
    total, n = data.loss(logits, batch)
    ln2 = math.log(2.0)
    frame1 = math.log1p(math.exp(-2.0)) + 87 * ln2  # pitch 60 with p = sigmoid(2); the rest at p = 1/2
    frame2 = math.log1p(math.exp(1.0)) + 87 * ln2  # pitch 67 sounds but its logit is -1
    frame3 = 88 * ln2  # second chorale's only predicted frame
    assert n == 3
    assert float(total) == pytest.approx(frame1 + frame2 + frame3, rel=1e-6)
    assert data.summarize(float(total) / n) == {
        "nll": pytest.approx((frame1 + frame2 + frame3) / 3, rel=1e-6)
    }


def test_jsb_frequency_baseline_by_hand():
    data = from_chorales(tiny_chorales())
    # training targets: {60, 64}, {67}, {64} -> p(60) = 1/3, p(64) = 2/3, p(67) = 1/3, other pitches ~0
    # test targets: {60} and {60}; each frame costs -ln(1/3) for 60, -ln(1/3) for 64 not sounding,
    # -ln(2/3) for 67 not sounding, about 0 for the rest
    expected = -math.log(1 / 3) - math.log(1 / 3) - math.log(2 / 3)
    assert frequency_baseline(data) == pytest.approx(expected, abs=1e-3)


def test_jsb_accepts_a_gzip_copy(tmp_path):
    path = tmp_path / "tiny.json.gz"
    path.write_bytes(gzip.compress(json.dumps(tiny_chorales()).encode()))
    assert len(load_dataset("jsb", path=path).train) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"splits":\n{"train": [],\n "valid": [[[60], oops]]}}', "not valid JSON at line 3"),
        (b"\x1f\x8bnot really gzip", "not a valid gzip file"),
        (b'{"train": [[[60], [61]]], "valid": [[[60], [61]]]}', "splits 'train', 'valid' and 'test'"),
        (
            b'{"train": [], "valid": [[[60], [61]]], "test": [[[60], [61]]]}',
            "train: expected a non-empty list",
        ),
        (b'{"train": [[[60]]], "valid": [[[60], [61]]], "test": [[[60], [61]]]}', "at least 2 frames"),
        (b'{"train": [[[60], [130]]], "valid": [[[60], [61]]], "test": [[[60], [61]]]}', "pitch 130"),
        (b'{"train": [[[60], [true]]], "valid": [[[60], [61]]], "test": [[[60], [61]]]}', "pitch True"),
        (b"\xff\xfe bad bytes", "not UTF-8"),
    ],
)
def test_jsb_malformed_file_names_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_bytes(content)
    with pytest.raises(OdysseyError, match=message) as info:
        load_dataset("jsb", path=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_jsb_missing_file(tmp_path):
    with pytest.raises(OdysseyError, match=f"jsb: {tmp_path}/nope.json not found"):
        load_dataset("jsb", path=tmp_path / "nope.json")


# --- padding and batching ------------------------------------------------------------------------------


def test_padding_never_leaks_into_the_loss():
    data = load_dataset("synthetic", n_train=8, seed=3)
    batch = next(data.batches("train", 8))
    assert batch.lengths.min() < batch.inputs.shape[1]  # the batch really is padded
    outputs = torch.randn(*batch.targets.shape, generator=torch.Generator().manual_seed(0))
    total, n = data.loss(outputs, batch)
    poisoned = torch.where(batch.mask().unsqueeze(-1), outputs, torch.full_like(outputs, 1e30))
    assert float(data.loss(poisoned, batch)[0]) == pytest.approx(float(total))
    # the same as scoring every sequence on its own
    alone = sum(
        float(((outputs[b, :length] - y) ** 2).sum())
        for b, (length, (_, y)) in enumerate(zip(batch.lengths.tolist(), data.train.sequences, strict=True))
    )
    assert float(total) == pytest.approx(alone) and n == int(batch.lengths.sum())


def test_shuffled_batches_cover_every_sequence_once():
    split = SequenceSplit([(torch.full((k + 1, 1), float(k)), torch.zeros(k + 1, 1)) for k in range(7)])
    seen = []
    for batch in split.batches(3, torch.Generator().manual_seed(0)):
        seen += [int(batch.inputs[b, 0, 0]) for b in range(len(batch.lengths))]
        assert batch.lengths.tolist() == [int(batch.inputs[b, 0, 0]) + 1 for b in range(len(batch.lengths))]
    assert sorted(seen) == list(range(7)) and seen != list(range(7))


def test_stream_rows_keep_every_token_in_order():
    tokens = torch.arange(14)
    batch = next(StreamSplit(tokens).batches(3))
    assert batch.lengths.tolist() == [5, 4, 4]  # 13 predicted tokens, none dropped
    inputs = torch.cat([batch.inputs[r, :n] for r, n in enumerate(batch.lengths.tolist())])
    targets = torch.cat([batch.targets[r, :n] for r, n in enumerate(batch.lengths.tolist())])
    assert torch.equal(inputs, tokens[:-1]) and torch.equal(targets, tokens[1:])
    chunks = list(batch.chunks(2))
    assert [c.lengths.tolist() for c in chunks] == [[2, 2, 2], [2, 2, 2], [1, 0, 0]]
    assert torch.equal(chunks[1].inputs[0], torch.tensor([2, 3]))


# --- PTB and char ---------------------------------------------------------------------------------------


@pytest.fixture
def ptb_dir(tmp_path):
    # the training file is not shipped: the validation text stands in for it
    text = (shared_path("data") / "ptb.valid.txt").read_text()
    (tmp_path / "ptb.train.txt").write_text(text)
    (tmp_path / "ptb.valid.txt").write_text(text)
    (tmp_path / "ptb.test.txt").write_text((shared_path("data") / "ptb.test.txt").read_text())
    return tmp_path


def test_ptb_vocabulary_eos_and_unk(ptb_dir):
    data = load_dataset("ptb", path=ptb_dir)
    lines = (shared_path("data") / "ptb.valid.txt").read_text().splitlines()
    words = {w for line in lines for w in line.split()}
    assert data.vocab_size == len(words | {"<eos>", "<unk>"}) == data.input_size == data.output_size
    assert data.metric == "perplexity"
    assert len(data.train) == sum(len(line.split()) + 1 for line in lines)
    eos = data.vocab.index("<eos>")
    assert int((data.train.tokens == eos).sum()) == len(lines)
    test_text = (shared_path("data") / "ptb.test.txt").read_text()
    test_words = [w for line in test_text.splitlines() for w in line.split()]
    unseen = sum(w not in words for w in test_words)
    unk = data.vocab.index("<unk>")
    assert unseen > 0
    assert int((data.test.tokens == unk).sum()) == unseen + test_words.count("<unk>")


def test_ptb_perplexity_is_exp_of_mean_nll(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text("a b\nb\n")
    data = load_dataset("ptb", path=tmp_path)
    # vocabulary by frequency: <eos> (2), b (2), a (1), <unk> (0)
    assert data.vocab == ["<eos>", "b", "a", "<unk>"]
    batch = next(data.batches("valid", 1))  # a b <eos> b <eos>: 4 predictions
    logits = torch.zeros(1, 4, 4)
    logits[0, 0, 1] = math.log(5.0)  # after "a", p(b) = 5 / 8 (the other three at 1 / 8)
    total, n = data.loss(logits, batch)
    expected = [-math.log(5 / 8), -math.log(1 / 4), -math.log(1 / 4), -math.log(1 / 4)]
    assert n == 4 and float(total) == pytest.approx(sum(expected))
    metrics = data.summarize(float(total) / n)
    assert metrics["perplexity"] == pytest.approx(math.exp(sum(expected) / 4))
    assert data.summarize(math.log(4))["perplexity"] == pytest.approx(4.0)  # uniform: perplexity = V


def test_ptb_missing_and_bad_files(ptb_dir, tmp_path):
    (ptb_dir / "ptb.train.txt").unlink()
    with pytest.raises(OdysseyError, match=f"ptb: {ptb_dir}/ptb.train.txt not found"):
        load_dataset("ptb", path=ptb_dir)
    (ptb_dir / "ptb.train.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(OdysseyError, match="ptb.train.txt: not UTF-8 text"):
        load_dataset("ptb", path=ptb_dir)
    with pytest.raises(OdysseyError, match="option path"):
        load_dataset("ptb")
    with pytest.raises(OdysseyError, match="not found"):
        load_dataset("ptb", path=tmp_path / "absent")


def test_char_splits_by_position_and_bpc(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcd" * 50)  # 200 characters
    data = load_dataset("char", path=path)
    assert (len(data.train), len(data.valid), len(data.test)) == (180, 10, 10)
    assert data.vocab == ["a", "b", "c", "d"] and data.metric == "bpc"
    assert data.train.tokens[:5].tolist() == [0, 1, 2, 3, 0]
    assert data.valid.tokens[0].item() == 180 % 4  # position 180 holds "a"
    metrics = data.summarize(math.log(4))  # a uniform guess over 4 characters: 2 bits each
    assert metrics["bpc"] == pytest.approx(2.0) and metrics["perplexity"] == pytest.approx(4.0)
    assert data.summarize(1.0)["bpc"] == pytest.approx(1 / math.log(2))


def test_char_tinyshakespeare_and_bad_inputs(tmp_path):
    data = load_dataset("char", path=shared_path("data") / "tinyshakespeare.txt", max_chars=10_000)
    assert len(data.train) + len(data.valid) + len(data.test) == 10_000
    with pytest.raises(OdysseyError, match="too short"):
        (tmp_path / "short.txt").write_text("abc")
        load_dataset("char", path=tmp_path / "short.txt")
    with pytest.raises(OdysseyError, match="not found"):
        load_dataset("char", path=tmp_path / "absent.txt")
    for split in [(0.5, 0.2, 0.2), ("a", "b", "c"), (1.0,)]:
        with pytest.raises(OdysseyError, match="summing to 1"):
            load_dataset("char", path=shared_path("data") / "tinyshakespeare.txt", split=split)


# --- synthetic and the registry -------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_sums():
    a, b = load_dataset("synthetic", seed=1), load_dataset("synthetic", seed=1)
    c = load_dataset("synthetic", seed=2)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a.train.sequences, b.train.sequences, strict=True))
    assert not torch.equal(a.train.sequences[0][0], c.train.sequences[0][0])
    lengths = {len(x) for x, _ in a.train.sequences}
    assert lengths == {2, 3, 4}
    x, y = a.test.sequences[0]
    assert float(y[-1]) == pytest.approx(float(x.sum()))


def test_unknown_dataset_and_option():
    with pytest.raises(OdysseyError, match="known datasets: jsb, ptb, char, synthetic"):
        load_dataset("timit")
    with pytest.raises(OdysseyError, match="unknown option"):
        load_dataset("synthetic", path="x", colour="red")
    with pytest.raises(OdysseyError, match="n_train must be an integer"):
        load_dataset("synthetic", n_train="many")


def test_batch_to_keeps_lengths_on_cpu():
    batch = Batch(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.tensor([3, 1]))
    assert batch.to("cpu").lengths.device.type == "cpu" and batch.n_steps == 4


def test_an_unreadable_data_file_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("hello world\n" * 50)

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(OdysseyError, match=r"^char: .*corpus.txt: cannot read \(Permission denied\)$"):
        load_dataset("char", path=str(text))
