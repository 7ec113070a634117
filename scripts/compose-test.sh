#!/usr/bin/env bash
# The Docker setup end to end, for real: build the image with the CPU override, start the stack, sweep a
# tiny study through the `cli` service, check the workers' logs, the dashboard and the report, then kill
# the worker container in the middle of a trial and check that the trial is re-queued and completed once.
#
#   bash scripts/compose-test.sh          # run by .ci/run after the unit tests
#
# Needs a Docker engine with Compose >= 2.24, or this project's stand-ins: docker-standins.sh (Debian's
# engine, stand-in base images, a local torch index; no registry needed), looked for at $DOCKER_STANDINS,
# else ../shared/tools/docker-standins.sh next to the clone, and started with `up` when found (as root).
# Without either it runs nothing and exits 77 after saying so: never a silent pass.
# COMPOSE_TEST_NO_CACHE=1 builds without Docker's layer cache (to measure a cold build).
#
# Everything it starts is its own: compose project "odyssey-ci-<pid>" (containers, network, volume), image
# "lstm-odyssey-ci-<pid>:cpu", folder reports/odyssey-ci-<pid>/, ports picked by Docker; all removed at the
# end, pass or fail (`down -v`, `rmi`). The build cache is kept, so a second run builds in seconds.
set -euo pipefail
# All in one function: bash reads it whole before running it, so editing or checking out this file
# during a run cannot change what the run does.
main() {
cd "$(dirname "$0")/.."
ROOT=$PWD

PROJECT=odyssey-ci-$$
IMAGE=lstm-odyssey-ci-$$:cpu
STUDY=synthetic-tiny
KILL_STUDY=compose-test-kill
# What the worker's log must show: the C++ cell kernels loaded (the words of `odyssey kernels`), and none
# of the fallbacks or compiler warnings.
KERNELS_IN_USE='C\+\+ kernels: (loaded|compiled)'
KERNELS_NOT_IN_USE='kernels unavailable|TorchScript kernels|is not compatible with the compiler|compiling the'
# Bounds (seconds): generous, for a loaded 2-core machine; the run normally takes a fraction of them.
BUILD_S=2400 START_S=300 SWEEP_S=900 REPORT_S=600 KILL_S=900

T0=$SECONDS
say() { printf '[compose-test %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
FAILURES=()
fail() { say "FAIL: $*"; FAILURES+=("$*"); }
die() { say "FAIL: $*"; exit 1; }

# --------------------------------------------------------------------------- a Docker engine, or stand-ins
standins=${DOCKER_STANDINS:-$ROOT/../shared/tools/docker-standins.sh}
if [[ -f $standins && $(id -u) -eq 0 ]]; then
    say "using the Docker stand-ins: $standins up (Debian's engine, stand-in base images, a local torch index)"
    exports=$(bash "$standins" up --project "$ROOT") || die "docker-standins.sh up failed (see above)"
    eval "$exports"  # TORCH_VARIANT=cpu, TORCH_INDEX_URL=<the local index>, COMPOSE_BAKE=false
elif [[ -f $standins ]]; then
    say "found $standins but it needs root: using the Docker engine as it is"
fi
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    say "NOT RUN: no Docker engine answers ($(docker version 2>&1 | tail -n 1 || echo 'no docker command'))"
    say "and no stand-ins at $standins (set DOCKER_STANDINS to docker-standins.sh, or install Docker)"
    exit 77
fi
docker compose version >/dev/null 2>&1 || die "Docker Compose v2 is missing (docker compose version failed)"
say "Docker $(docker version --format '{{.Server.Version}}'), Compose $(docker compose version --short)"

# --------------------------------------------------------------------------- the stack's settings
WORK=$(mktemp -d)
REPORTS=reports/$PROJECT  # under ./reports, which the cli service mounts at /reports
# Passwords with the characters Compose would expand or cut unquoted: single quotes keep them (.env.example).
secret() { echo "ci\$$1#$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
PASSWORD=$(secret pw) APP_PASSWORD=$(secret app) READER_PASSWORD=$(secret reader)
cat >"$WORK/env" <<EOF
POSTGRES_USER=odyssey
POSTGRES_PASSWORD='$PASSWORD'
ODYSSEY_APP_PASSWORD='$APP_PASSWORD'
ODYSSEY_READER_PASSWORD='$READER_PASSWORD'
POSTGRES_DB=odyssey
POSTGRES_BIND=127.0.0.1
POSTGRES_PORT=0
DASHBOARD_BIND=127.0.0.1
DASHBOARD_PORT=0
ODYSSEY_UID=$(id -u)
ODYSSEY_GID=$(id -g)
ODYSSEY_CPU_JOBS=2
ODYSSEY_WORKER_NAME=compose-test
EOF
# This run's own image name, so that parallel runs (other checkouts on the same engine) never share one.
cat >"$WORK/image.yml" <<EOF
services:
  db-init: {image: "\${COMPOSE_TEST_IMAGE}"}
  worker: {image: "\${COMPOSE_TEST_IMAGE}"}
  dashboard: {image: "\${COMPOSE_TEST_IMAGE}"}
  cli: {image: "\${COMPOSE_TEST_IMAGE}"}
EOF
export COMPOSE_TEST_IMAGE=$IMAGE TORCH_VARIANT=${TORCH_VARIANT:-cpu}
unset COMPOSE_FILE COMPOSE_PROJECT_NAME COMPOSE_PROFILES
dc() { docker compose -p "$PROJECT" --env-file "$WORK/env" -f docker-compose.yml -f docker-compose.cpu.yml \
    -f "$WORK/image.yml" "$@"; }
psql_() { dc exec -T postgres psql -U odyssey -d odyssey -tA -F ' ' -c "$1"; }

cleanup() {
    local rc=$?
    set +e
    if ((rc != 0)) && [[ -n ${STARTED:-} ]]; then
        say "logs of the stack (last 60 lines per service):"
        dc logs --no-color --tail 60 >&2 2>&1
    fi
    dc --profile cli down -v --remove-orphans >/dev/null 2>&1
    docker image rm "$IMAGE" "${IMAGE%:*}:other-uid" >/dev/null 2>&1
    rm -rf "$WORK" "$ROOT/$REPORTS"
    if [[ -n ${MADE_REPORTS:-} ]]; then rmdir "$ROOT/reports" 2>/dev/null; fi
    say "removed project $PROJECT (containers, volume), its images and $REPORTS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------- .env quoting, as Compose reads it
config=$(dc config --format json) || die "docker compose config failed"
# (`config` prints a `$` as `$$`, so that its output reads back the same)
seen=$(python3 -c 'import json, sys
print(json.load(sys.stdin)["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].replace("$$", "$"))' <<<"$config")
[[ $seen == "$PASSWORD" ]] || fail ".env: a single-quoted password with \$ and # reached Compose changed"

# --------------------------------------------------------------------------- build, once
[[ -d reports ]] || MADE_REPORTS=1
mkdir -p "$REPORTS"
say "build $IMAGE (TORCH_VARIANT=$TORCH_VARIANT${TORCH_INDEX_URL:+, TORCH_INDEX_URL=$TORCH_INDEX_URL}; \
ODYSSEY_UID=$(id -u))"
t=$SECONDS
timeout "$BUILD_S" docker compose -p "$PROJECT" --env-file "$WORK/env" -f docker-compose.yml \
    -f docker-compose.cpu.yml -f "$WORK/image.yml" --progress plain build ${COMPOSE_TEST_NO_CACHE:+--no-cache} \
    >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; die "the image build failed"; }
built=$(grep -cE '^ ?[A-Za-z0-9_-]+ +Built$' "$WORK/build.log" || true)
say "built in $((SECONDS - t)) s: $built service build(s), $(docker image inspect -f '{{.Size}}' "$IMAGE" \
    | numfmt --to=iec)"
((built == 1)) || fail "expected one build for the whole stack, saw $built"
# The same Dockerfile as another user: root builds above when run as root (ODYSSEY_UID=0), so build for a
# fresh uid too (and for root when not root). Only the runtime stage's user step and copies run again.
other_uid=$([[ $(id -u) -eq 0 ]] && echo 4242 || echo 0)
t=$SECONDS
COMPOSE_TEST_IMAGE=${IMAGE%:*}:other-uid ODYSSEY_UID=$other_uid ODYSSEY_GID=$other_uid \
    timeout "$BUILD_S" docker compose -p "$PROJECT" --env-file "$WORK/env" -f docker-compose.yml \
    -f docker-compose.cpu.yml -f "$WORK/image.yml" --progress plain build db-init >"$WORK/build2.log" 2>&1 \
    || { tail -n 20 "$WORK/build2.log" >&2; fail "the image does not build with ODYSSEY_UID=$other_uid"; }
owner=$(docker run --rm --entrypoint sh "${IMAGE%:*}:other-uid" -c 'id -u; stat -c %u /reports' 2>&1 | xargs)
[[ $owner == "$other_uid $other_uid" ]] || fail "ODYSSEY_UID=$other_uid image: runs as / /reports owned by: $owner"
say "built for ODYSSEY_UID=$other_uid in $((SECONDS - t)) s (runs as uid $other_uid)"

# --------------------------------------------------------------------------- up
say "up: postgres, db-init, worker (CPU, 2 jobs), dashboard"
STARTED=1
dc up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "docker compose up failed"; }
deadline=$((SECONDS + START_S))
until [[ $(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q dashboard)" 2>/dev/null) == healthy ]]; do
    ((SECONDS < deadline)) || die "the dashboard was not healthy within ${START_S} s"
    [[ -n $(dc ps -q worker) ]] || die "the worker container is not running"
    sleep 2
done
say "stack up (dashboard healthy)"

# --------------------------------------------------------------------------- the tiny study, through cli
dc run --rm -T cli study create "examples/$STUDY.toml" >"$WORK/create.out" 2>"$WORK/create.err" \
    || { cat "$WORK/create.err" >&2; die "cli study create failed"; }
say "$(cat "$WORK/create.out")"
total=$(psql_ "SELECT count(*) FROM odyssey_trials WHERE study = '$STUDY'")
((total > 0)) || die "no trials enqueued"
deadline=$((SECONDS + SWEEP_S))
while :; do
    counts=$(psql_ "SELECT coalesce(sum((state IN ('complete', 'diverged'))::int), 0),
                           coalesce(sum((state = 'failed')::int), 0)
                    FROM odyssey_trials WHERE study = '$STUDY'")
    read -r done failed <<<"$counts"
    ((failed == 0)) || die "$failed trial(s) of $STUDY failed"
    ((done == total)) && break
    ((SECONDS < deadline)) || die "$STUDY: $done of $total trials done after ${SWEEP_S} s"
    sleep 3
done
say "$STUDY: all $total trials completed"

dc logs --no-color worker >"$WORK/worker.log" 2>&1
if grep -q Traceback "$WORK/worker.log"; then fail "a traceback in the worker's log"; fi
if grep -qE "$KERNELS_NOT_IN_USE" "$WORK/worker.log"; then
    fail "the worker does not use the prebuilt C++ kernels: $(grep -m1 -E "$KERNELS_NOT_IN_USE" "$WORK/worker.log" | cut -c1-300)"
fi
if ! grep -qE "$KERNELS_IN_USE" "$WORK/worker.log"; then
    fail "no line matching '$KERNELS_IN_USE' (the C++ kernels in use) in the worker's log"
fi

# --------------------------------------------------------------------------- the dashboard
port=$(dc port dashboard 8080 | sed 's/.*://')
page=$(curl -fsSL --max-time 30 "http://127.0.0.1:$port/") || fail "the dashboard did not answer on port $port"
grep -q "<title>Optuna Dashboard" <<<"$page" || fail "the dashboard's page is not optuna-dashboard's"
studies=$(curl -fsS --max-time 30 "http://127.0.0.1:$port/api/studies" || true)
grep -q "\"$STUDY\"" <<<"$studies" || fail "the dashboard does not list $STUDY"
say "dashboard answers on 127.0.0.1:$port and lists $STUDY"

# --------------------------------------------------------------------------- the report, through cli
t=$SECONDS
timeout "$REPORT_S" docker compose -p "$PROJECT" --env-file "$WORK/env" -f docker-compose.yml \
    -f docker-compose.cpu.yml -f "$WORK/image.yml" run --rm -T cli report "$STUDY" -o "/$REPORTS/$STUDY" \
    >"$WORK/report.out" 2>"$WORK/report.err" || { tail -n 20 "$WORK/report.err" >&2; fail "cli report failed"; }
html=$REPORTS/$STUDY/report.html
if [[ -s $html ]] && (($(stat -c %s "$html") > 10000)); then
    say "report written in $((SECONDS - t)) s: $html ($(stat -c %s "$html") bytes)"
else
    fail "no report at $html"
fi

# --------------------------------------------------------------------------- a worker killed mid-trial
# A study whose trials last long enough to be caught running (about 25 s each on an idle 2-core machine:
# with 300 training sequences a trial ended within the second the poll takes); the spec goes in through
# the reports mount.
cat >"$REPORTS/$KILL_STUDY.toml" <<'EOF'
name = "compose-test-kill"
variants = ["V"]
design = "sobol"
trials_per_variant = 2
seed = 2

[dataset]
name = "synthetic"
n_train = 3000
n_valid = 16
n_test = 16
min_length = 20
max_length = 40

[training]
max_epochs = 4
patience = 4
batch_size = 1
optimizer = "adam"

[space.learning_rate]
value = 0.001

[space.hidden_size]
low = 16
high = 32
EOF
dc run --rm -T cli study create "/$REPORTS/$KILL_STUDY.toml" >/dev/null 2>"$WORK/create2.err" \
    || { cat "$WORK/create2.err" >&2; die "cli study create $KILL_STUDY failed"; }
deadline=$((SECONDS + KILL_S))
until slot=$(psql_ "SELECT slot FROM odyssey_trials WHERE study = '$KILL_STUDY' AND state = 'running'
                    ORDER BY slot LIMIT 1") && [[ -n $slot ]]; do
    ((SECONDS < deadline)) || die "no trial of $KILL_STUDY started within ${KILL_S} s"
    sleep 1
done
dc kill -s SIGKILL worker >/dev/null 2>&1 || die "docker compose kill worker failed"
state=$(psql_ "SELECT state FROM odyssey_trials WHERE study = '$KILL_STUDY' AND slot = $slot")
say "killed the worker container (SIGKILL) while slot $slot ran (state now: $state); starting it again"
[[ $state == running ]] || fail "slot $slot was not running when the worker was killed (state $state)"
dc up -d worker >/dev/null 2>&1 || die "docker compose up -d worker failed"
kill_total=$(psql_ "SELECT count(*) FROM odyssey_trials WHERE study = '$KILL_STUDY'")
while :; do
    read -r done failed <<<"$(psql_ "SELECT coalesce(sum((state IN ('complete', 'diverged'))::int), 0),
                                            coalesce(sum((state = 'failed')::int), 0)
                                     FROM odyssey_trials WHERE study = '$KILL_STUDY'")"
    ((failed == 0)) || die "$failed trial(s) of $KILL_STUDY failed"
    ((done == kill_total)) && break
    ((SECONDS < deadline)) || die "$KILL_STUDY: $done of $kill_total done ${KILL_S} s after the kill"
    sleep 3
done
attempts=$(psql_ "SELECT attempts FROM odyssey_trials WHERE study = '$KILL_STUDY' AND slot = $slot")
# Optuna's view: per design slot, exactly one COMPLETE trial; the killed slot also has its lost attempt.
optuna=$(psql_ "SELECT a.value_json, sum((t.state = 'COMPLETE')::int), count(*)
                FROM trials t JOIN studies s ON s.study_id = t.study_id
                JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'odyssey_slot'
                WHERE s.study_name = '$KILL_STUDY' GROUP BY a.value_json ORDER BY 1")
say "all $kill_total trials of $KILL_STUDY completed; slot $slot: $attempts attempts; Optuna per slot" \
    "(slot, complete, trials): $(xargs <<<"$optuna")"
((attempts == 2)) || fail "slot $slot: $attempts attempts recorded, expected 2 (killed, then re-queued)"
while read -r s complete n; do
    ((complete == 1)) || fail "Optuna: slot $s completed $complete times"
    if ((s == slot)); then ((n >= 2)) || fail "Optuna: the killed slot $s was not re-queued ($n trial)"; fi
done <<<"$optuna"

# --------------------------------------------------------------------------- no secret in any log
dc logs --no-color >"$WORK/all.log" 2>&1
for secret in "$PASSWORD" "$APP_PASSWORD" "$READER_PASSWORD"; do
    if grep -qF "$secret" "$WORK/all.log" "$WORK/report.out" "$WORK/report.err" "$html" 2>/dev/null; then
        fail "a database password appears in a log or the report"
    fi
done

# --------------------------------------------------------------------------- down -v
t=$SECONDS
dc --profile cli down -v --remove-orphans >/dev/null 2>&1 || fail "docker compose down -v failed"
[[ -z $(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT") ]] || fail "volumes left"
say "down -v in $((SECONDS - t)) s"
STARTED=
if ((${#FAILURES[@]})); then
    say "compose test FAILED (${#FAILURES[@]}): $(printf '%s; ' "${FAILURES[@]}")"
    exit 1
fi
say "compose test passed in $((SECONDS - T0)) s"
}

main "$@"
