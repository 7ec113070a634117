"""Benchmark: the sweep's coordination overhead against bare Optuna, and worker throughput.

Starts its own throwaway PostgreSQL server, then, in the same run:

1. overhead per trial of one odyssey `Worker` (claim, heartbeat, results rows, tell) on a no-op objective,
   against two bare Optuna loops on the same server: (a) ask/suggest/tell over the same enqueued design
   (`study.enqueue_trial`), (b) ask/suggest/tell with Optuna's RandomSampler creating each trial;
2. trials/second with 1, 4, 16 and 32 concurrent worker processes on a no-op objective (processes are
   started and imported first, then released together by a barrier, so start-up is not timed), checking
   that every designed trial ran exactly once: no errors, lost or duplicated trials, nothing left running.

    .venv/bin/python bench/sweep.py [--trials 200] [--workers 1,4,16,32] [--throughput-trials 640]
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from storage import results  # noqa: E402
from sweep.spec import parse_spec  # noqa: E402
from sweep.study import SLOT_ATTR, create_study, distributions, load_optuna_study  # noqa: E402
from sweep.worker import Worker, WorkerConfig  # noqa: E402
from tests.pgserver import throwaway_server  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def spec_for(name: str, trials: int) -> object:
    variants = ["V", "GRU"]
    return parse_spec({
        "name": name, "variants": variants, "trials_per_variant": max(1, trials // len(variants)),
        "design": "random", "seed": 0, "dataset": {"name": "synthetic"},
    })


def suggest(trial: optuna.Trial, name: str, dist: object) -> object:
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)  # type: ignore[attr-defined]


def bare_enqueued(url: str, trials: int) -> float:
    """Seconds per trial of ask/suggest/tell over an enqueued design (Optuna's own way to run one)."""
    spec = spec_for("bare-enqueued", trials)
    dists = distributions(spec)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="bare-enqueued", storage=storage)
    from sweep.study import designed_trials

    for row in designed_trials(spec):
        params = {"variant": row["variant"], **{k: v for k, v in row["params"].items() if k in dists}}
        study.enqueue_trial(params, user_attrs={SLOT_ATTR: row["slot"]})
    n = len(study.trials)
    start = time.perf_counter()
    for _ in range(n):
        trial = study.ask()
        for name, dist in dists.items():
            suggest(trial, name, dist)
        study.tell(trial, 0.0)
    return (time.perf_counter() - start) / n


def bare_sampled(url: str, trials: int) -> float:
    """Seconds per trial of ask/suggest/tell with RandomSampler making each trial."""
    spec = spec_for("bare-sampled", trials)
    dists = distributions(spec)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="bare-sampled", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(fixed_distributions=dists)
        study.tell(trial, 0.0)
    return (time.perf_counter() - start) / trials


def odyssey_worker(url: str, trials: int) -> float:
    """Seconds per trial of one odyssey Worker (heartbeats on) with the no-op objective."""
    spec = spec_for("odyssey", trials)
    create_study(url, spec, check_data=False)
    worker = Worker(WorkerConfig(url=url, study="odyssey", objective="noop", heartbeat_interval=10,
                                 grace_period=60, poll_interval=0.1))
    start = time.perf_counter()
    ran = worker.run()
    elapsed = time.perf_counter() - start
    verify(url, "odyssey", len(spec.variants) * spec.trials_per_variant)
    return elapsed / ran


def verify(url: str, name: str, expected: int) -> None:
    """Every designed slot exactly once COMPLETE, nothing failed, waiting or running; results agree."""
    trials = load_optuna_study(url, name).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    slots = sorted(t.user_attrs[SLOT_ATTR] for t in trials if t.state == TrialState.COMPLETE)
    problems = []
    if slots != list(range(expected)):
        problems.append(f"{len(slots)} complete trials for {expected} slots, {len(set(slots))} distinct")
    if len(trials) != expected:
        problems.append(f"{len(trials)} Optuna trials for {expected} designed")
    for state in (TrialState.FAIL, TrialState.WAITING, TrialState.RUNNING):
        if state in states:
            problems.append(f"{states.count(state)} trials {state.name}")
    frame = results.load_study(url, name).trials
    if len(frame) != expected or set(frame["state"]) != {"complete"}:
        problems.append(f"results rows: {frame['state'].value_counts().to_dict()}")
    if problems:
        raise SystemExit(f"{name}: " + "; ".join(problems))


def _throughput_worker(url: str, name: str, barrier: object, out: object) -> None:
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.disable(logging.INFO)
    worker = Worker(WorkerConfig(url=url, study=name, objective="noop", heartbeat_interval=10,
                                 grace_period=60, poll_interval=0.05))
    worker._targets_now()  # connect and load the study before the clock starts
    barrier.wait()  # type: ignore[attr-defined]
    out.put(worker.run())  # type: ignore[attr-defined]


def throughput(url: str, n_workers: int, trials: int) -> tuple[float, float]:
    """(trials/second, seconds) of `n_workers` processes draining a `trials`-trial no-op study."""
    name = f"tp{n_workers}"
    spec = spec_for(name, trials)
    create_study(url, spec, check_data=False)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n_workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_throughput_worker, args=(url, name, barrier, out)) for _ in range(n_workers)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=600)
    start = time.perf_counter()
    counts = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.join(60)
        if proc.exitcode != 0:
            raise SystemExit(f"a worker exited with status {proc.exitcode}")
    expected = len(spec.variants) * spec.trials_per_variant
    if sum(counts) != expected:
        raise SystemExit(f"workers ran {sum(counts)} trials for {expected} designed")
    verify(url, name, expected)
    return expected / elapsed, elapsed


@click.command()
@click.option("--trials", type=int, default=200, show_default=True, help="Trials per overhead measurement.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Overhead repeats (median).")
@click.option("--workers", default="1,4,16,32", show_default=True, help="Concurrent worker counts.")
@click.option("--throughput-trials", type=int, default=640, show_default=True)
def main(trials: int, repeats: int, workers: str, throughput_trials: int) -> None:
    """Run the benchmark and print markdown tables."""
    logging.disable(logging.INFO)
    with throwaway_server(max_connections=200) as server:
        bare_e, bare_s, ours = [], [], []
        for r in range(repeats):
            # each measurement in its own database, interleaved so machine noise hits all alike
            bare_e.append(bare_enqueued(server.create_database(), trials))
            bare_s.append(bare_sampled(server.create_database(), trials))
            ours.append(odyssey_worker(server.create_database(), trials))
            print(f"repeat {r + 1}/{repeats}: bare enqueued {bare_e[-1] * 1e3:.1f} ms, bare sampled "
                  f"{bare_s[-1] * 1e3:.1f} ms, odyssey {ours[-1] * 1e3:.1f} ms per trial", file=sys.stderr)
        e, s, o = (statistics.median(x) * 1e3 for x in (bare_e, bare_s, ours))
        print(f"\n## Coordination overhead per trial (PostgreSQL, {trials} trials, median of {repeats})\n")
        print("| loop | ms/trial | odyssey / this |")
        print("|---|---:|---:|")
        print(f"| bare Optuna ask/suggest/tell, enqueued design | {e:.1f} | {o / e:.2f} |")
        print(f"| bare Optuna ask/tell, RandomSampler | {s:.1f} | {o / s:.2f} |")
        print(f"| odyssey Worker (claim, heartbeat, results rows, tell) | {o:.1f} | 1.00 |")

        print(f"\n## Throughput, no-op objective ({throughput_trials} trials, PostgreSQL)\n")
        print("| workers | trials/s | seconds | check |")
        print("|---:|---:|---:|---|")
        for n in (int(x) for x in workers.split(",")):
            rate, seconds = throughput(server.create_database(), n, throughput_trials)
            print(f"| {n} | {rate:.1f} | {seconds:.1f} | each trial once, none lost or failed |", flush=True)


if __name__ == "__main__":
    main()
