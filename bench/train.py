"""Epoch time of `odyssey train` on JSB Chorales against the script a researcher would write instead.

    .venv/bin/python bench/train.py [--quick] [--batch-sizes 1,16] [--hidden 100] [--repeats 3] [--threads 1]
                                    [--clock wall|cpu]

Two pairs, measured interleaved in one run (epoch by epoch, so machine noise hits both sides alike):

* NP: `odyssey train --variant NP` against a plain script around torch.nn.LSTM (pad the batch, pack it
  when lengths differ, linear head, Bernoulli loss masked at padding, SGD with Nesterov momentum);
* V: `odyssey train --variant V` against the same script with the vanilla LSTM of Greff et al. written as
  a per-step loop in plain PyTorch (peepholes: i and f look at c_{t-1}, o at c_t; autograd does BPTT).

An epoch is what `odyssey train` reports as one: a pass over the training set in batches of B, then the
metric on the validation and test sets (batches of 128). Each side trains its own network from the same
seed; the times are medians over `--repeats` epochs, alternating between the two sides (one more epoch
of each comes first, as a warm-up).
`--clock cpu` times with this thread's CPU time instead of the wall clock (only with one thread): on a
shared machine it leaves out the time other processes take. Prints a markdown table: epoch seconds of
each side and their ratio (odyssey / script). Targets (docs/performance.md): NP <= 1.05x the
torch.nn.LSTM script, V <= 0.7x the per-step loop script.
`--quick` times one epoch on the first 48 training chorales (valid and test: 24 each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.data.base import SequenceSplit  # noqa: E402
from sweep.data.music import MusicDataset, load_jsb  # noqa: E402
from sweep.nn import kernels  # noqa: E402
from sweep.training import EpochReport, TrainConfig, train  # noqa: E402

LR, MOMENTUM, EVAL_BATCH = 1e-2, 0.9, 128
Sequences = list[tuple[Tensor, Tensor]]


class PeepholeLSTM(nn.Module):
    """Greff et al.'s vanilla LSTM as a researcher writes it: one Python iteration per time step."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.peep = nn.Parameter(torch.zeros(3, hidden_size))  # i, f, o

    def forward(self, x: Tensor) -> Tensor:  # (B, T, M) -> (B, T, N); padded steps are ignored by the loss
        h = c = x.new_zeros(x.size(0), self.hidden_size)
        xs = self.ih(x)  # the input projection of all steps in one product
        outputs = []
        for t in range(x.size(1)):
            i, f, z, o = (xs[:, t] + self.hh(h)).chunk(4, 1)
            c = torch.sigmoid(f + self.peep[1] * c) * c + torch.sigmoid(i + self.peep[0] * c) * torch.tanh(z)
            h = torch.sigmoid(o + self.peep[2] * c) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, 1)


class TorchLSTM(nn.Module):
    """torch.nn.LSTM, packing a batch whose sequences differ in length."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        if bool((lengths == x.size(1)).all()):
            return self.lstm(x)[0]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.size(1))[0]


class ResearcherScript:
    """The hand-written training loop: recurrent layer, linear head, masked Bernoulli NLL, Nesterov SGD."""

    def __init__(self, variant: str, hidden: int, batch_size: int, data: dict[str, Sequences]) -> None:
        torch.manual_seed(0)
        self.variant, self.batch_size, self.data = variant, batch_size, data
        self.rnn = TorchLSTM(88, hidden) if variant == "NP" else PeepholeLSTM(88, hidden)
        self.head = nn.Linear(hidden, 88)
        params = [*self.rnn.parameters(), *self.head.parameters()]
        self.opt = torch.optim.SGD(params, lr=LR * (1 - MOMENTUM), momentum=MOMENTUM, nesterov=True)
        self.order = torch.Generator().manual_seed(0)

    def loss(self, seqs: Sequences) -> tuple[Tensor, int]:
        lengths = torch.tensor([len(x) for x, _ in seqs])
        x = pad_sequence([x for x, _ in seqs], batch_first=True)
        y = pad_sequence([y for _, y in seqs], batch_first=True)
        h = self.rnn(x, lengths) if self.variant == "NP" else self.rnn(x)
        nll = F.binary_cross_entropy_with_logits(self.head(h), y, reduction="none").sum(-1)
        mask = torch.arange(x.size(1)) < lengths.unsqueeze(1)
        return nll[mask].sum(), int(lengths.sum())

    def epoch(self) -> tuple[float, float, float]:
        """Train one epoch; returns what `odyssey train` reports: the mean training loss of the updates,
        and the validation and test NLL per frame."""
        train_set = self.data["train"]
        order = torch.randperm(len(train_set), generator=self.order).tolist()
        losses = []
        for start in range(0, len(order), self.batch_size):
            total, n = self.loss([train_set[i] for i in order[start : start + self.batch_size]])
            loss = total / n
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
        return (sum(losses) / len(losses), self.evaluate("valid"), self.evaluate("test"))

    @torch.no_grad()
    def evaluate(self, split: str) -> float:
        seqs, total, frames = self.data[split], 0.0, 0
        for start in range(0, len(seqs), EVAL_BATCH):
            nll, n = self.loss(seqs[start : start + EVAL_BATCH])
            total, frames = total + nll.item(), frames + n
        return total / frames


def measure(
    variant: str, hidden: int, batch_size: int, dataset: MusicDataset, script: ResearcherScript,
    epochs: int, cpu_clock: bool,
) -> tuple[list[float], list[float]]:
    """Seconds of `epochs` epochs of `odyssey train` (one run, the CLI's code path) and of the script,
    alternating: the script trains one epoch after each of odyssey's, from odyssey's epoch callback. With the
    wall clock odyssey's figure is the epoch's `seconds` as training records it; with the CPU clock, this
    thread's CPU time from the end of one epoch to the end of the next (the first epoch, with the run's
    setup, is a warm-up for both sides and dropped)."""
    clock = time.thread_time if cpu_clock else time.perf_counter
    ours: list[float] = []
    theirs: list[float] = []
    mark = clock()

    def on_epoch(report: EpochReport) -> None:
        nonlocal mark
        ours.append(clock() - mark if cpu_clock else report.seconds)
        start = clock()
        script.epoch()
        theirs.append(clock() - start)
        mark = clock()

    config = TrainConfig(variant=variant, hidden_size=hidden, learning_rate=LR, momentum=MOMENTUM,
                         batch_size=batch_size, max_epochs=epochs + 1, patience=epochs + 1, seed=0)
    result = train(config, dataset, on_epoch)
    if result.status != "complete" or len(ours) != epochs + 1:
        raise SystemExit(f"{variant} stopped after {len(ours)} epoch(s) ({result.status})")
    return ours[1:], theirs[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed epoch on 48/24/24 chorales")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated (default 1,16)")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per side (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a sweep worker uses 1)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall clock or CPU time")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures the calling thread only: use it with --threads 1")
    cpu_clock = args.clock == "cpu"
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    kernels.load(required=True)  # a first build is not an epoch
    full = load_jsb()
    splits = ("train", "valid", "test")
    data = {name: list(full.split(name).sequences) for name in splits}  # type: ignore[attr-defined]
    if args.quick:
        data = {name: seqs[: 48 if name == "train" else 24] for name, seqs in data.items()}
    dataset = MusicDataset("jsb", *(SequenceSplit(data[name]) for name in splits))
    frames = sum(len(x) for x, _ in data["train"])
    print(f"JSB: {len(data['train'])} training chorales ({frames} frames), hidden {args.hidden}, "
          f"{args.threads} thread(s), torch {torch.__version__}; median of {repeats} epoch(s), 1 warm-up, "
          f"{args.clock} clock",
          flush=True)
    print()
    print("| batch | variant | odyssey train (s/epoch) | researcher's script (s/epoch) | ratio | target |")
    print("|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for variant, script_name, target in (("NP", "torch.nn.LSTM", 1.05), ("V", "per-step loop", 0.7)):
            script = ResearcherScript(variant, args.hidden, batch, data)
            times = measure(variant, args.hidden, batch, dataset, script, repeats, cpu_clock)
            ours, theirs = (statistics.median(t) for t in times)
            ratio = ours / theirs
            verdict = "ok" if ratio <= target else "MISSED"
            print(f"| {batch} | {variant} | {ours:.2f} | {theirs:.2f} ({script_name}) | {ratio:.2f}x | "
                  f"<= {target}x {verdict} |", flush=True)


if __name__ == "__main__":
    main()
