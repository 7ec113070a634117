"""A bounded, seeded chaos run in the style of an operator's fault injection: worker processes killed -9,
stopped past the grace period and resumed, sent SIGTERM, started with a random failpoint armed, the repair
pass run concurrently and (PostgreSQL) the server restarted, at random moments, for a bounded time; then
every surviving worker must exit by itself and a clean worker finish the study, with every designed slot
trained exactly once.

$ODYSSEY_CHAOS_SECONDS (default 40) bounds the fault phase per backend; $ODYSSEY_CHAOS_SEED picks the run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from storage.failpoints import FAILPOINTS
from sweep.spec import parse_spec
from sweep.study import create_study, repair_study, study_status
from tests.faults import assert_exactly_once, env_with, finish_cleanly, odyssey, spec_dict, worker_args

SECONDS = float(os.environ.get("ODYSSEY_CHAOS_SECONDS", "40"))
SEED = int(os.environ.get("ODYSSEY_CHAOS_SEED", "20261130"))
WORKERS = 3
# Failpoints a worker can reach (creation's belong to `study create`).
WORKER_POINTS = sorted(p for p in FAILPOINTS if not p.startswith("create."))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_chaos(request: pytest.FixtureRequest, backend: str) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    server = request.getfixturevalue("pg_server") if backend == "postgres" else None
    rng = random.Random(f"{SEED}-{backend}")
    spec = spec_dict(per_variant=30)
    create_study(url, parse_spec(spec), check_data=False)
    procs: list[subprocess.Popen] = []
    events: list[str] = []

    def start(failpoint: str | None = None) -> None:
        procs.append(odyssey(*worker_args(url, "sleep:0.4"), env=env_with(failpoint)))

    def alive() -> list[subprocess.Popen]:
        return [p for p in procs if p.poll() is None]

    for _ in range(WORKERS):
        start()
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline and study_status(url, "fp").totals["complete"] < 60:
            time.sleep(rng.uniform(0.5, 2.0))
            running = alive()
            action = rng.choice(["kill", "kill", "failpoint", "term", "zombie", "repair"]
                                + (["restart"] if server else []))
            victim = rng.choice(running) if running else None
            if action == "kill" and victim:
                victim.kill()
            elif action == "term" and victim:
                victim.send_signal(signal.SIGTERM)
            elif action == "zombie" and victim:
                victim.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(2.5, 4.0))  # past the grace period: its trial is judged lost
                victim.send_signal(signal.SIGCONT)
            elif action == "repair":
                repair_study(url, "fp")
            elif action == "restart" and server is not None:
                server.restart()
            elif action == "failpoint":
                point = rng.choice(WORKER_POINTS)
                start(f"{point}:{rng.choice(['kill', 'exit'])}@{rng.randint(1, 3)}")
                events.append(f"start with {point}")
            events.append(action)
            while len(alive()) < WORKERS:
                start()
        # The faults stop: every worker still running must finish the study and exit by itself.
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            # 0: finished or stopped cleanly; killed by us or a failpoint (-9, 3); SIGTERM before the
            # handlers were installed (still importing) ends it at once (-15).
            assert proc.returncode in (0, -signal.SIGKILL, 3, -signal.SIGTERM), out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finish_cleanly(url)
    assert_exactly_once(url, spec)
    print(f"chaos {backend} seed {SEED}: {len(procs)} worker processes, events {events}")
