"""Benchmark: the whole report for a Greff-sized study (9 variants x 600 trials = 5400 trials).

Run: ``.venv/bin/python bench/report.py [--trials-per-variant 600] [--trees 64] [--out DIR]``

Prints the report's wall and CPU time against the 15 s target and, as a machine-independent figure, its
ratio to a reference measured in the same run: fitting one 64-tree random forest on all 5400 trials (the
least any fANOVA of the pooled study must do). CPU time is the steadier figure on a shared machine. Also
says whether the page carries the small-sample warning (none at 600 trials per variant; with
``--trials-per-variant 4``, the size of examples/jsb-quick.toml, it must).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.ensemble import RandomForestRegressor  # noqa: E402

from analysis.report import build_report_from_data  # noqa: E402
from analysis.space import scored_trials, space_from_spec  # noqa: E402
from analysis.synthetic import synthetic_study  # noqa: E402
from sweep.core.variants import GREFF_VARIANTS as GREFF  # noqa: E402  (torch-free)

TARGET_SECONDS = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-per-variant", type=int, default=600)
    parser.add_argument("--trees", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30, help="maximum epochs per synthetic trial")
    parser.add_argument("--jobs", type=int, default=None, help="forests fitted at once (default: CPUs)")
    parser.add_argument("--out", type=Path, default=None, help="keep the report here (default: temporary)")
    args = parser.parse_args()

    data = synthetic_study(GREFF, trials_per_variant=args.trials_per_variant, max_epochs=args.epochs)
    n = len(data.trials)
    print(f"study: {len(GREFF)} variants x {args.trials_per_variant} = {n} trials, {len(data.epochs)} epochs")

    space = space_from_spec(data.spec)
    scored = scored_trials(data.trials, space, "best_test")
    started, cpu = time.perf_counter(), time.process_time()
    forest = RandomForestRegressor(n_estimators=args.trees, max_depth=64, random_state=0)
    forest.fit(scored[space.names].to_numpy(), scored["score"].to_numpy())
    reference, reference_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"reference: one {args.trees}-tree forest on {len(scored)} finished trials: {reference:.2f} s "
          f"(cpu {reference_cpu:.2f} s)")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        steps: list[tuple[float, str]] = []
        started, cpu = time.perf_counter(), time.process_time()
        path = build_report_from_data(
            data, out, n_trees=args.trees, jobs=args.jobs,
            progress=lambda m: steps.append((time.perf_counter(), m)),
        )  # fmt: skip
        total, total_cpu = time.perf_counter() - started, time.process_time() - cpu
        size = path.stat().st_size / 1e6
        page = path.read_text(encoding="utf-8")
        warned = 'id="sample-size"' in page
        too_small = "too small for any conclusion" in page
    marks = [t for t, _ in steps] + [started + total]
    slowest = sorted(((marks[i + 1] - t, m) for i, (t, m) in enumerate(steps)), reverse=True)[:3]
    print("longest gaps between progress lines: " + "; ".join(f"{m} {s:.2f} s" for s, m in slowest))
    ratio, ratio_cpu = total / reference, total_cpu / reference_cpu
    print(f"report: {total:.2f} s wall, {total_cpu:.2f} s cpu ({size:.1f} MB HTML); "
          f"{ratio:.1f}x the reference (wall), {ratio_cpu:.1f}x (cpu)")  # fmt: skip
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("small-sample warning: " + ("present" + (" (too small for any conclusion)" if too_small else "")
                                      if warned else "none"))  # fmt: skip
    verdict = "within" if total < TARGET_SECONDS else "OVER"
    print(f"target {TARGET_SECONDS:.0f} s: {verdict} ({total / TARGET_SECONDS:.2f} of the budget)")


if __name__ == "__main__":
    main()
