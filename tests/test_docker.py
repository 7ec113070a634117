"""The container setup: compose files, Dockerfile and .env.example, checked without a Docker engine.

Static checks validate every compose file (and the merged models users run) against the Compose
specification and check their consistency with the Dockerfile, .env.example, .dockerignore and the repo.
Runtime checks then run each service's exact command line as a local process against a throwaway
PostgreSQL: the container's `odyssey`/`python` become this venv's, /app the repo root, the `postgres`
host name the test server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.shared import shared_path

ROOT = Path(__file__).resolve().parent.parent
# The Compose specification's JSON schema, vendored so that the package's tests need nothing beside it;
# a test keeps the copy equal to the shared one (../shared beside the checkout).
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
BASE, CPU, WORKERS = "docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.workers.yml"
COMPOSE_FILES = (BASE, CPU, WORKERS)
# The file combinations users run (docs/docker.md, docs/multi-host.md).
STACKS = {"gpu": (BASE,), "cpu": (BASE, CPU), "workers": (WORKERS,), "workers-cpu": (WORKERS, CPU)}
DASHBOARD_PORT = 8080


# ------------------------------------------------------------------------------------ compose model


class Reset:
    """A value tagged `!reset`: removes the attribute from the merged model."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Override:
    """A value tagged `!override`: replaces the attribute instead of merging into it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that understands Compose's `!reset` / `!override` tags."""


def _tagged(cls: type) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        return cls(loader.construct_scalar(node) or None)

    return construct


ComposeLoader.add_constructor("!reset", _tagged(Reset))
ComposeLoader.add_constructor("!override", _tagged(Override))


def load_compose(name: str) -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def untag(node: Any) -> Any:
    """The document as Compose validates one file: tags dropped, their values kept."""
    if isinstance(node, Reset | Override):
        return untag(node.value)
    if isinstance(node, dict):
        return {key: untag(value) for key, value in node.items()}
    if isinstance(node, list):
        return [untag(value) for value in node]
    return node


# Attributes whose override replaces rather than appends (Compose merge rules).
_REPLACED = {"command", "entrypoint", "test"}


def merge(base: Any, over: Any, key: str = "") -> Any:
    """Merge two compose documents the way `docker compose -f base -f over` does (for what we use)."""
    if isinstance(over, Override):
        return untag(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, value in over.items():
            if isinstance(value, Reset):
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], value, k)
            else:
                out[k] = untag(value)
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in _REPLACED:
        return base + [v for v in untag(over) if v not in base]
    return untag(over)


def model(files: tuple[str, ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in files:
        merged = merge(merged, load_compose(name))
    return merged


# Compose interpolation: $$ escapes; ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err},
# ${VAR:+alt}, ${VAR+alt} and $VAR.
_VAR = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def interpolate_text(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["esc"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        empty_counts = op is not None and op.startswith(":")
        unset = value is None or (empty_counts and value == "")
        if op in (":-", "-"):
            return arg if unset else value
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return "" if unset else arg
        return value or ""

    return _VAR.sub(substitute, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def variables(text: str) -> dict[str, str | None]:
    """Every ${VAR} referenced in ``text`` (outside comments) -> its operator (None when bare)."""
    found: dict[str, str | None] = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for match in _VAR.finditer(line):
            name = match["braced"] or match["bare"]
            if name and (found.get(name) is None or match["op"] in (":?", "?")):
                found[name] = match["op"]
    return found


def env_example() -> tuple[dict[str, str], set[str]]:
    """.env.example as (active assignments, every documented name including commented-out ones)."""
    active: dict[str, str] = {}
    documented: set[str] = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^\s*(#\s*)?([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if match:
            documented.add(match[2])
            if not match[1]:
                active[match[2]] = match[3].strip()
    return active, documented


def example_env(**overrides: str) -> dict[str, str]:
    """The environment a user gets from `cp .env.example .env` and setting the required values."""
    env, _ = env_example()
    env = {k: v for k, v in env.items() if not k.startswith("COMPOSE_")}
    env.update(POSTGRES_PASSWORD="s3cret-Pw", ODYSSEY_APP_PASSWORD="app-Pw-2",
               ODYSSEY_READER_PASSWORD="rd-Pw-3", ODYSSEY_STORAGE="postgresql+psycopg://odyssey@db.internal/odyssey")
    env.update(overrides)
    return env


def service_command(service: dict[str, Any], entrypoint: list[str]) -> list[str]:
    """The argv a container of ``service`` runs: its entrypoint (or the image's) and command."""
    ep = service.get("entrypoint", entrypoint)
    cmd = service.get("command", [])
    ep = shlex.split(ep) if isinstance(ep, str) else list(ep)
    cmd = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    return ep + cmd


# ------------------------------------------------------------------------------------ Dockerfile model


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def find(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


Parsed = tuple[list[Instruction], list[Stage]]
Completed = subprocess.CompletedProcess


def parse_dockerfile(text: str) -> Parsed:
    """Instructions before the first FROM, and the stages (continuations joined, comments dropped)."""
    header: list[Instruction] = []
    stages: list[Stage] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped by Docker too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(args.split()), start)
        buffer = ""
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            header.append(instruction)
    assert not buffer, "Dockerfile ends inside a continued line"
    return header, stages


@pytest.fixture(scope="module")
def dockerfile() -> Parsed:
    return parse_dockerfile(DOCKERFILE.read_text())


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stay within a folder, `**` crosses folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i : close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``path`` (relative to the repo): the last matching pattern
    wins, and a pattern matching a folder leaves out everything below it."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _docker_pattern(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_matching_follows_docker_rules() -> None:
    patterns = ["*.db", "**/*.log", "cache", "keep/*", "!keep/this"]
    assert ignored_by_docker("a.db", patterns) and not ignored_by_docker("sub/a.db", patterns)
    assert ignored_by_docker("x.log", patterns) and ignored_by_docker("a/b/x.log", patterns)
    assert ignored_by_docker("cache/deep/file", patterns) and not ignored_by_docker("src/cache", patterns)
    assert ignored_by_docker("keep/that", patterns) and not ignored_by_docker("keep/this", patterns)


# ================================================================================== static checks


@pytest.fixture(scope="module")
def compose_schema() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def test_vendored_schema_is_the_shared_one() -> None:
    shared = shared_path("schemas", "compose-spec.json")
    assert json.loads(SCHEMA.read_text()) == json.loads(shared.read_text())


def test_schema_check_rejects_a_broken_file(compose_schema: jsonschema.Draft7Validator) -> None:
    document = untag(load_compose(BASE))
    document["services"]["worker"]["gpu_count"] = 2  # not a Compose attribute
    document["services"]["postgres"]["ports"] = "5432:5432"  # must be a list
    assert len(list(compose_schema.iter_errors(document))) == 2


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_each_compose_file_is_valid_against_the_compose_spec(
    name: str, compose_schema: jsonschema.Draft7Validator
) -> None:
    document = untag(load_compose(name))
    compose_schema.validate(document)
    # ... and still after interpolation with the values of .env.example.
    compose_schema.validate(interpolate(document, example_env()))


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_merged_stacks_are_valid_and_complete(stack: str, compose_schema: jsonschema.Draft7Validator) -> None:
    merged = interpolate(model(STACKS[stack]), example_env())
    compose_schema.validate(merged)
    for name, service in merged["services"].items():
        assert service.get("image") or service.get("build"), f"{stack}: {name} has no image and no build"
    assert "worker" in merged["services"]


def test_base_stack_runs_postgres_worker_dashboard_and_a_profile_gated_cli() -> None:
    services = model((BASE,))["services"]
    assert set(services) == {"postgres", "db-init", "worker", "dashboard", "cli"}
    started_by_up = {name for name, svc in services.items() if not svc.get("profiles")}
    assert started_by_up == {"postgres", "db-init", "worker", "dashboard"}
    assert services["cli"]["profiles"] == ["cli"]
    assert services["db-init"]["restart"] == "no", "a one-shot job must not be restarted after success"


def test_postgres_is_pinned_persistent_and_health_checked() -> None:
    compose = model((BASE,))
    pg = compose["services"]["postgres"]
    image, _, tag = pg["image"].partition(":")
    assert image == "postgres" and re.match(r"^\d+\.\d+", tag), f"unpinned image {pg['image']}"
    volume = pg["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"], "data not in a volume"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        pattern = r"\$\{" + name + r"(:[-?][^}]*)?\}"
        assert re.fullmatch(pattern, pg["environment"][name]), f"{name} hard-coded"
    assert ":?" in pg["environment"]["POSTGRES_PASSWORD"], "a missing password must stop `up`"


def test_odyssey_services_wait_for_a_healthy_database_and_reach_it_by_name() -> None:
    services = model((BASE,))["services"]
    pg_port = services["postgres"]["ports"][0].rsplit(":", 1)[1]
    for name in ("db-init", "worker", "dashboard", "cli"):
        svc = services[name]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
        if name in ("worker", "dashboard"):  # tables exist before any of them opens the database
            assert svc["depends_on"]["db-init"]["condition"] == "service_completed_successfully", name
        url = interpolate_text(svc["environment"]["ODYSSEY_STORAGE"], example_env())
        assert url.startswith("postgresql+psycopg://") and f"@postgres:{pg_port}/" in url, url
        assert "Pw" not in url, "the password must not be part of the URL"
        # Only db-init is the superuser; the others are the unprivileged application role (issue 10).
        user, password = ("odyssey", "s3cret-Pw") if name == "db-init" else ("odyssey_app", "app-Pw-2")
        assert url.startswith(f"postgresql+psycopg://{user}@"), url
        assert interpolate_text(svc["environment"]["PGPASSWORD"], example_env()) == password
        query_url = interpolate_text(svc["environment"]["ODYSSEY_QUERY_STORAGE"], example_env())
        assert query_url.startswith("postgresql+psycopg://odyssey_reader@postgres:")
        assert interpolate_text(svc["environment"]["ODYSSEY_QUERY_PASSWORD"], example_env()) == "rd-Pw-3"


@pytest.mark.parametrize("name", (BASE, WORKERS))
def test_gpu_worker_is_one_container_using_every_gpu(name: str) -> None:
    worker = model((name,))["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "replicas" not in worker["deploy"] and "scale" not in worker
    argv = service_command(interpolate(worker, example_env()), ["odyssey"])
    assert argv[:4] == ["odyssey", "worker", "--devices", "auto"]
    assert "--forever" in argv and argv[argv.index("--jobs-per-device") + 1].isdigit()
    assert worker["restart"] == "unless-stopped" and worker["init"] is True


@pytest.mark.parametrize("stack", ("cpu", "workers-cpu"))
def test_cpu_override_drops_the_gpu_and_runs_on_cpu(stack: str) -> None:
    worker = interpolate(model(STACKS[stack]), example_env())["services"]["worker"]
    assert "deploy" not in worker, "a GPU reservation fails on hosts without the NVIDIA runtime"
    argv = service_command(worker, ["odyssey"])
    assert argv[argv.index("--devices") + 1] == "cpu" and "--forever" in argv


def test_workers_file_has_only_workers_and_requires_the_remote_database() -> None:
    compose = model((WORKERS,))
    assert set(compose["services"]) == {"db-init", "worker"}
    assert "volumes" not in compose and "postgres" not in json.dumps(compose)
    worker = compose["services"]["worker"]
    assert worker["depends_on"] == {"db-init": {"condition": "service_completed_successfully"}}
    assert worker["environment"]["ODYSSEY_STORAGE"].startswith("${ODYSSEY_STORAGE:?")
    with pytest.raises(MissingVariable, match="ODYSSEY_STORAGE"):
        interpolate(worker, {k: v for k, v in example_env().items() if k != "ODYSSEY_STORAGE"})


def test_dashboard_port_is_8080_everywhere() -> None:
    dashboard = interpolate(model((BASE,))["services"]["dashboard"], example_env())
    (mapping,) = dashboard["ports"]
    bind, published, target = mapping.split(":")
    assert published == target == str(DASHBOARD_PORT)
    assert bind == "127.0.0.1", "an unauthenticated dashboard is published on loopback by default"
    argv = service_command(dashboard, ["odyssey"])
    assert argv[argv.index("--port") + 1] == str(DASHBOARD_PORT)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert f"127.0.0.1:{DASHBOARD_PORT}/" in " ".join(dashboard["healthcheck"]["test"])


def test_cli_mounts_examples_and_reports() -> None:
    cli = model((BASE,))["services"]["cli"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in cli["volumes"])}
    assert mounts == {"/app/examples": "./examples", "/reports": "./reports"}
    assert (ROOT / "examples").is_dir()
    # ./reports is an output folder (git-ignored); Docker would create it root-owned, unwritable for the
    # container's user, so the guide creates it first.
    assert "mkdir -p reports" in (ROOT / "docs" / "docker.md").read_text()


def test_every_variable_is_documented_or_defaulted() -> None:
    active, documented = env_example()
    used: set[str] = set()
    for name in COMPOSE_FILES:
        for var, op in variables((ROOT / name).read_text()).items():
            used.add(var)
            if op not in (":-", "-"):
                assert var in documented, f"{name} needs ${var} but .env.example does not mention it"
    stale = {name for name in documented if name not in used and not name.startswith("COMPOSE_")}
    assert not stale, f".env.example documents variables no compose file uses: {sorted(stale)}"
    assert active["POSTGRES_PASSWORD"] == "", ".env.example must not ship a usable password"


def test_defaults_in_compose_match_env_example() -> None:
    # A user who deletes a line from .env gets the same behaviour as the example's value.
    active, _ = env_example()
    for name in COMPOSE_FILES:
        for match in _VAR.finditer((ROOT / name).read_text()):
            if match["op"] in (":-", "-") and match["braced"] in active:
                assert match["arg"] == active[match["braced"]], f"{name}: default of {match['braced']}"


def literal_secrets(text: str) -> list[str]:
    """Secret-named keys set to a literal (not ${VAR}) and passwords inside URLs, outside comments."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    code = "\n".join(line.split(" #", 1)[0] for line in lines)
    found = []
    secret_key = r"(?im)^[\s-]*(?:ENV\s+|ARG\s+)?\w*(?:password|secret|token)\w*\s*[:=]\s*(?P<value>.*)$"
    for match in re.finditer(secret_key, code):
        if not match["value"].strip().strip("\"'").startswith("${"):
            found.append(match[0].strip())
    userinfo = r"://(?:\$\{[^}]*\}|[^/\s:@$]+):(?P<pw>[^@\s]+)@"
    found += [m[0] for m in re.finditer(userinfo, code) if not m["pw"].startswith("${")]
    return found


def test_no_secret_literals_and_env_is_ignored() -> None:
    for name in (*COMPOSE_FILES, "docker/Dockerfile", "docker/dashboard.py", "docker/initdb.py"):
        assert literal_secrets((ROOT / name).read_text()) == [], name
    # The scan itself catches what it is for.
    assert len(literal_secrets("environment:\n  POSTGRES_PASSWORD: hunter2\n  URL: pg://u:pw@h/db\n")) == 2
    assert literal_secrets("ENV API_TOKEN=abc") and not literal_secrets("  PGPASSWORD: ${PGPASSWORD:-}")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"
    patterns = dockerignore_patterns()
    secret_or_local = (".env", ".env.local", "docker/.env", ".git/config", ".venv/bin/python", "odyssey.db",
                       "reports/a/report.html", "data/results.db", "sweep/__pycache__/cli.cpython-311.pyc")
    for path in secret_or_local:
        assert ignored_by_docker(path, patterns), f".dockerignore lets {path} into the image"


def test_dockerfile_needs_no_frontend_image() -> None:
    # `# syntax=docker/dockerfile:1` pulls a frontend image from a registry on every build; the built-in
    # frontend of Docker >= 20.10 handles everything the Dockerfile uses (cache mounts included).
    assert not re.search(r"(?im)^#\s*syntax\s*=", DOCKERFILE.read_text())


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_one_service_builds_the_one_image_of_the_stack(stack: str) -> None:
    services = interpolate(model(STACKS[stack]), example_env())["services"]
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["db-init"], "one build per `up`: every other service reuses db-init's image"
    odyssey = {svc["image"] for name, svc in services.items() if name != "postgres"}
    assert len(odyssey) == 1, odyssey
    assert {svc.get("pull_policy") for name, svc in services.items() if name != "postgres"} == {"never"}
    # db-init runs before every other odyssey service of `up`, so its image is built before they start.
    for name, svc in services.items():
        if name not in ("postgres", "db-init", "cli"):
            assert "db-init" in svc["depends_on"], name


@pytest.mark.parametrize("name", (BASE, WORKERS))
def test_build_passes_the_torch_index_from_env(name: str) -> None:
    mirror = "https://mirror.example/torch/cpu"
    build = interpolate(model((name,)), example_env(TORCH_INDEX_URL=mirror))["services"]["db-init"]["build"]
    assert build["args"]["TORCH_INDEX_URL"] == mirror
    unset = interpolate(model((name,)), example_env())["services"]["db-init"]["build"]
    assert unset["args"]["TORCH_INDEX_URL"] == "", "unset: the Dockerfile's default index for TORCH_VARIANT"


def test_tls_keys_stay_out_of_git_and_the_image(tmp_path: Path) -> None:
    keys = ("certs/server.key", "certs/server.crt", "certs/root.crt", "server.key", "docker/tls/client.pem",
            "deploy/host.p12")
    patterns = dockerignore_patterns()
    for path in keys:
        assert ignored_by_docker(path, patterns), f".dockerignore lets {path} into the build context"
    checked = subprocess.run(["git", "check-ignore", "--no-index", *keys], cwd=ROOT, capture_output=True,
                             text=True, check=False)
    assert sorted(checked.stdout.split()) == sorted(keys), f"git would track: {checked.stdout}"


def test_env_example_tells_how_to_quote_a_dollar() -> None:
    text = (ROOT / ".env.example").read_text()
    assert "$$" in text and re.search(r"POSTGRES_PASSWORD='[^']*\$[^']*'", text), \
        ".env.example must say how to keep a `$` in a value (Compose expands it otherwise)"
    # The example is right about Compose: `$cd` in an unquoted value is a variable.
    assert interpolate_text("ab$cd#ef", {}) == "ab#ef" and interpolate_text("ab$$cd", {}) == "ab$cd"


def test_build_context_and_dockerfile_references_exist(dockerfile: Parsed) -> None:
    patterns = dockerignore_patterns()
    for name in (BASE, WORKERS):
        for svc_name, svc in model((name,))["services"].items():
            build = svc.get("build")
            if build:
                context = ROOT / build["context"]
                assert context.resolve() == ROOT and (context / build["dockerfile"]).is_file(), svc_name
    _, stages = dockerfile
    for stage in stages:
        for copy in stage.find("COPY"):
            if "--from=" in copy.args:
                continue
            *sources, _dest = copy.args.split()
            for source in sources:
                if source == ".":
                    continue
                assert (ROOT / source).exists(), f"Dockerfile line {copy.line}: {source} missing"
                assert not ignored_by_docker(source.rstrip("/"), patterns), f"{source} is in .dockerignore"
    for path in ("sweep/cli/main.py", "storage/engine.py", "analysis/__init__.py", "pyproject.toml"):
        assert not ignored_by_docker(path, patterns), f".dockerignore leaves {path} out of the build"


def test_service_scripts_are_copied_into_the_image(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    runtime = stages[-1]
    workdir = runtime.find("WORKDIR")[-1].args
    copied = {}
    for copy in runtime.find("COPY"):
        if "--from=" not in copy.args:
            *sources, dest = copy.args.split()
            for source in sources:
                target = Path(workdir, dest, Path(source).name) if len(sources) > 1 else Path(workdir, dest)
                copied[str(target)] = source.rstrip("/")
    assert copied.get(f"{workdir}/examples") == "examples", "examples belong in the WORKDIR"
    for files in STACKS.values():
        for name, service in model(files)["services"].items():
            entrypoint = service.get("entrypoint", [])
            if entrypoint[:1] == ["python"]:
                script = entrypoint[1]
                assert script in copied, f"{name}: {script} is not in the image"
                assert (ROOT / copied[script]).is_file()


def test_dockerfile_is_multistage_with_a_torch_build_argument(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    assert len(stages) >= 2 and stages[0].name, "multi-stage: a named builder and a runtime stage"
    builder, runtime = stages[0], stages[-1]
    assert runtime.base != builder.name, "runtime starts from a clean base, not the builder"
    args = {i.args.split("=")[0]: i.args for i in builder.find("ARG")}
    assert args.get("TORCH_VARIANT", "").split("=")[1] in ("cpu", "cu124")
    torch_install = [i for i in builder.find("RUN") if "TORCH_INDEX_URL" in i.args]
    assert torch_install and "--index-url" in torch_install[0].args
    # An empty TORCH_INDEX_URL (what compose passes when .env leaves it unset) means TORCH_VARIANT's index.
    assert args["TORCH_INDEX_URL"] == "TORCH_INDEX_URL="
    default = "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${TORCH_VARIANT}}"
    assert f'--index-url "{default}"' in torch_install[0].args
    assert any(f"--from={builder.name}" in i.args for i in runtime.find("COPY")), "runtime copies the venv"
    assert not runtime.find("RUN") or all("pip install" not in i.args for i in runtime.find("RUN"))


def test_dependencies_are_installed_before_the_source_is_copied(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    steps = stages[0].instructions
    source_copy = next(n for n, i in enumerate(steps) if i.keyword == "COPY" and i.args.split()[0] == ".")
    deps = [n for n, i in enumerate(steps) if i.keyword == "RUN" and "pip install -r" in i.args]
    assert deps and deps[0] < source_copy, "dependency layer must come before COPY of the source"
    copies_before = [i.args for i in steps[:source_copy] if i.keyword == "COPY"]
    assert all("sweep" not in c and "analysis" not in c and "storage" not in c for c in copies_before)
    package = [i.args for i in steps[source_copy:] if i.keyword == "RUN" and "pip install" in i.args]
    assert package and "--no-deps" in package[0], "the package itself installs without resolving deps"


def test_runtime_runs_odyssey_as_a_non_root_user(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    runtime = stages[-1]
    users = runtime.find("USER")
    # The host user's uid (ODYSSEY_UID), by default 1000: root only when the host user is root.
    assert users and users[-1].args == "${APP_UID}:${APP_GID}"
    args = dict(i.args.split("=", 1) for i in runtime.find("ARG"))
    assert args["APP_UID"] == args["APP_GID"] == "1000", "by default the final stage drops root"
    after = [i.args for i in runtime.find("RUN") if i.line > users[-1].line]
    assert after == ["odyssey kernels --require"], "after USER, only the check that runs as the app user"
    # A uid the base image has already (0 when the host user is root) is used as it is: `useradd --uid 0`
    # would fail the build ("UID 0 is not unique").
    (create,) = [i.args for i in runtime.find("RUN") if "useradd" in i.args]
    assert 'if getent passwd "${APP_UID}"' in create
    assert create.index("getent passwd") < create.index("useradd")
    (entrypoint,) = runtime.find("ENTRYPOINT")
    assert entrypoint.exec_form() == ["odyssey"]
    for stage in stages:
        for instruction in stage.find("ENV") + stage.find("ARG"):
            assert not re.search(r"(?i)password|secret|token", instruction.args), instruction


def test_image_ships_the_prebuilt_cell_kernels_without_a_compiler(dockerfile: Parsed) -> None:
    """Workers must not compile (or fall back to the slower kernels) at start: the builder builds the C++
    kernels into TORCH_EXTENSIONS_DIR, the runtime copies them, owned by the app user, and the image build
    fails unless the app user loads them there without a compiler."""
    _, stages = dockerfile
    builder, runtime = stages[0], stages[-1]
    assert any(i.args.endswith("&& odyssey kernels --require") for i in builder.find("RUN"))
    assert runtime.find("RUN")[-1].args == "odyssey kernels --require"
    assert runtime.find("RUN")[-1].line > runtime.find("USER")[-1].line
    for stage in (builder, runtime):
        envs = [i.args for i in stage.find("ENV")]
        assert any("TORCH_EXTENSIONS_DIR=/opt/torch_extensions" in e for e in envs), stage.name
    copies = [i.args for i in runtime.find("COPY") if "/opt/torch_extensions" in i.args]
    assert copies and "--chown=${APP_UID}:${APP_GID}" in copies[0]
    assert not any("g++" in i.args for i in runtime.find("RUN")), "no compiler in the runtime image"


@pytest.mark.slow
def test_package_builds_from_the_docker_build_context(tmp_path: Path) -> None:
    # What `COPY . .` + `pip install --no-deps .` see: the repo minus .dockerignore.
    patterns = dockerignore_patterns()
    context = tmp_path / "context"
    for folder, dirs, files in os.walk(ROOT):
        base = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not ignored_by_docker((base / d).as_posix(), patterns)]
        for name in files:
            relative = (base / name).as_posix()
            if not ignored_by_docker(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                (context / relative).write_bytes((ROOT / relative).read_bytes())
    assert not (context / ".git").exists() and not (context / "tests").exists()
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(context)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    import zipfile

    (wheel,) = tmp_path.glob("lstm_odyssey-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("sweep/cli/main.py", "sweep/worker/loop.py", "storage/engine.py", "analysis/report.py",
                   "sweep/data/jsb_chorales.json.gz"):
        assert member in names, f"the image would lack {member}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "odyssey = sweep.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_every_run_step_is_valid_shell(dockerfile: Parsed) -> None:
    _, stages = dockerfile
    for stage in stages:
        for run in stage.find("RUN"):
            script = re.sub(r"^(--\S+\s+)+", "", run.args)  # BuildKit flags such as --mount=...
            checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
            assert checked.returncode == 0, f"Dockerfile line {run.line}: {checked.stderr}"


def test_dependency_list_matches_pyproject() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    result = subprocess.run(
        [sys.executable, "docker/pyproject_deps.py", "pyproject.toml",
         "--extra=dashboard", "--exclude=torch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    expected = [d for d in project["dependencies"] if not d.startswith("torch")]
    assert lines == expected + project["optional-dependencies"]["dashboard"]
    bad = subprocess.run(
        [sys.executable, "docker/pyproject_deps.py", "pyproject.toml", "--extra", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "nope" in bad.stderr


# ================================================================================== runtime checks
# Each service's command line, as the container would run it, as a local process on a throwaway
# PostgreSQL (the `pg_url` fixture of tests/conftest.py).

VENV_BIN = Path(sys.executable).parent
TINY_SPEC = "examples/synthetic-tiny.toml"
TINY_STUDY = "synthetic-tiny"
# What the guide sweeps; the tests run the same lines on the tiny spec.
GUIDE_SPEC, GUIDE_STUDY = "examples/jsb-quick.toml", "jsb-quick"


@dataclass
class Local:
    """How a container of this stack maps onto this machine."""

    pg_host: str
    pg_port: int
    env: dict[str, str]  # the .env a user would have (from the test database's credentials)
    reports: Path

    def argv(self, argv: list[str]) -> list[str]:
        """Container argv -> local argv: this venv's odyssey/python, /app = repo root, /reports = tmp."""
        first = {"odyssey": str(VENV_BIN / "odyssey"), "python": sys.executable}.get(argv[0], argv[0])
        return [first, *(self.path(arg) for arg in argv[1:])]

    def path(self, arg: str) -> str:
        if arg.startswith("/app/"):
            return str(ROOT / arg.removeprefix("/app/"))
        if arg == "/reports" or arg.startswith("/reports/"):
            return str(self.reports) + arg.removeprefix("/reports")
        return arg

    def environ(self, service: dict[str, Any]) -> dict[str, str]:
        """The container's environment: the image's ENV plus the service's, `postgres` resolved here."""
        _, stages = parse_dockerfile(DOCKERFILE.read_text())
        env = {"HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        for instruction in stages[-1].find("ENV"):
            env.update(item.split("=", 1) for item in shlex.split(instruction.args))
        env["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"
        for key, value in interpolate(service.get("environment", {}), self.env).items():
            env[key] = value.replace("@postgres:5432/", f"@{self.pg_host}:{self.pg_port}/")
        env["ODYSSEY_DB_RETRY_SECONDS"] = "20"
        return env

    def run(self, service: dict[str, Any], argv: list[str], timeout: float = 300) -> Completed:
        return subprocess.run(self.argv(argv), cwd=ROOT, env=self.environ(service), capture_output=True,
                              text=True, timeout=timeout)

    def start(self, service: dict[str, Any], argv: list[str], log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(self.argv(argv), cwd=ROOT, env=self.environ(service), stdout=out,
                                    stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def local(pg_url: str, tmp_path: Path) -> Local:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    env = example_env(POSTGRES_USER=url.username, POSTGRES_PASSWORD=url.password, POSTGRES_DB=url.database)
    env["ODYSSEY_STORAGE"] = url.set(password=None).render_as_string(hide_password=False)
    env["PGPASSWORD"] = url.password
    reports = tmp_path / "reports"
    reports.mkdir()
    return Local(url.host, url.port, env, reports)


def services(files: tuple[str, ...], local: Local) -> dict[str, dict[str, Any]]:
    return interpolate(model(files), local.env)["services"]


def image_entrypoint() -> list[str]:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    return stages[-1].find("ENTRYPOINT")[-1].exec_form()


def stop(proc: subprocess.Popen, timeout: float = 60, send: bool = True) -> int:
    """SIGTERM (what `docker compose stop` sends; once: a second one means "now") and wait."""
    if proc.poll() is None:
        if send:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"did not stop within {timeout}s of SIGTERM")
    return proc.returncode


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bash_blocks(doc: str) -> list[str]:
    """The ```bash blocks of a document under docs/."""
    return re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)


def guide_block() -> list[str]:
    """The command lines of the guide's first bash block (docs/docker.md)."""
    blocks = bash_blocks("docker.md")
    assert blocks, "docs/docker.md has no bash block"
    return [line.strip() for line in blocks[0].splitlines() if line.strip()]


def dotenv(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^\w+=", line))


def run_guide_lines(lines: list[str], folder: Path) -> dict[str, str]:
    """Run shell lines of the guide in ``folder`` (holding a copy of .env.example); the resulting .env."""
    (folder / ".env.example").write_text((ROOT / ".env.example").read_text())
    for line in lines:
        subprocess.run(["bash", "-euc", line], cwd=folder, check=True, timeout=30)
    return dotenv(folder / ".env")


def test_guide_setup_lines_make_a_usable_env_file(tmp_path: Path) -> None:
    lines = [line for line in guide_block() if line.startswith(("cp .env.example", "sed -i", "mkdir"))]
    assert len(lines) == 3, lines
    env = run_guide_lines(lines, tmp_path)
    assert (tmp_path / "reports").is_dir()
    assert re.fullmatch(r"[0-9a-f]{48}", env["POSTGRES_PASSWORD"])
    assert env["ODYSSEY_UID"] == str(os.getuid()) and env["ODYSSEY_GID"] == str(os.getgid())
    assert "COMPOSE_FILE" not in env
    merged = interpolate(model((BASE,)), env)  # no MissingVariable: `up` would start
    assert merged["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"]
    assert merged["services"]["worker"]["image"] == "lstm-odyssey:cu124"


def test_guide_cpu_switch_selects_the_cpu_override_and_build(tmp_path: Path) -> None:
    setup = [line for line in guide_block() if line.startswith(("cp .env.example", "sed -i"))]
    switch = [b.strip() for b in bash_blocks("docker.md") if b.startswith("sed -i \"s/^TORCH_VARIANT")]
    assert len(switch) == 1, "docs/docker.md should have one bash line switching to the CPU setup"
    env = run_guide_lines([*setup, switch[0]], tmp_path)
    files = tuple(env["COMPOSE_FILE"].split(":"))
    assert files == STACKS["cpu"]
    services = interpolate(model(files), env)["services"]
    assert "deploy" not in services["worker"]
    for name in ("db-init", "worker", "dashboard", "cli"):
        assert services[name]["image"] == "lstm-odyssey:cpu"
    assert services["db-init"]["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_multi_host_env_starts_a_remote_worker() -> None:
    (block,) = [b for b in bash_blocks("multi-host.md") if "cat > .env" in b]
    body = re.search(r"<<'EOF'\n(.*?)\nEOF", block, re.S)
    assert body, "the worker host's .env heredoc"
    env = dict(line.split("=", 1) for line in body[1].splitlines())
    files = tuple(env["COMPOSE_FILE"].split(":"))
    assert files == STACKS["workers"]
    worker = interpolate(model(files), env)["services"]["worker"]
    assert worker["environment"]["ODYSSEY_STORAGE"] == env["ODYSSEY_STORAGE"]
    assert worker["environment"]["PGPASSWORD"] == env["PGPASSWORD"]
    assert "sslmode=" in env["ODYSSEY_STORAGE"]
    assert worker["hostname"] == env["ODYSSEY_WORKER_NAME"]


def test_multi_host_tls_override_is_valid(compose_schema: jsonschema.Draft7Validator) -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "multi-host.md").read_text(), re.S)
    merged = interpolate(merge(model((BASE,)), yaml.load(block, Loader=ComposeLoader)), example_env())
    compose_schema.validate(merged)
    postgres = merged["services"]["postgres"]
    assert "ssl=on" in postgres["command"] and "max_connections=200" in postgres["command"]
    assert postgres["volumes"][0].startswith("pgdata:"), "the override must keep the data volume"


def test_guide_references_existing_examples() -> None:
    text = "\n".join((ROOT / n).read_text() for n in ("docs/docker.md", "docs/multi-host.md", *COMPOSE_FILES))
    for spec in set(re.findall(r"examples/[\w.-]+\.toml", text)):
        assert (ROOT / spec).is_file(), f"{spec} is referenced but missing"
    assert (ROOT / TINY_SPEC).is_file()


@pytest.mark.postgres
def test_postgres_healthcheck_command(local: Local, pg_server: Any) -> None:
    pg = services((BASE,), local)["postgres"]
    kind, command = pg["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    bindir = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_isready"))[-1]).parent
    env = {**pg["environment"], "PATH": f"{bindir}:{os.environ['PATH']}", "PGHOST": local.pg_host}
    up = subprocess.run(["sh", "-c", command], env={**env, "PGPORT": str(local.pg_port)}, capture_output=True)
    assert up.returncode == 0, up
    down = subprocess.run(["sh", "-c", command], env={**env, "PGPORT": str(free_port())}, capture_output=True)
    assert down.returncode != 0, "the healthcheck must fail while PostgreSQL does not answer"


def run_db_init(local: Local, files: tuple[str, ...] = (BASE,)) -> Completed:
    """The `db-init` service's command, as `docker compose up` runs it before workers and dashboard."""
    service = services(files, local)["db-init"]
    return local.run(service, service_command(service, image_entrypoint()), timeout=120)


@pytest.mark.postgres
def test_db_init_creates_the_tables_once(local: Local) -> None:
    import sqlalchemy as sa

    first = run_db_init(local)
    assert first.returncode == 0, first.stderr
    tables = set(sa.inspect(sa.create_engine(_with_password(local))).get_table_names())
    assert {"studies", "trials", "odyssey_studies", "odyssey_trials"} <= tables  # Optuna's and ours
    again = run_db_init(local, (WORKERS,))  # an extra host's db-init on the same, ready database
    assert again.returncode == 0, again.stderr
    assert local.env["PGPASSWORD"] not in first.stderr + again.stderr
    # What follows db-init at `up`: every worker process and the dashboard open the storage at once.
    opener = "import sys; from storage.engine import optuna_storage; optuna_storage(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", opener, _with_password(local)], cwd=ROOT, text=True,
                              stderr=subprocess.PIPE) for _ in range(3)]
    outcomes = [(proc.wait(120), proc.stderr.read()) for proc in procs]
    assert all(code == 0 for code, _ in outcomes), outcomes


@pytest.mark.postgres
def test_db_init_fails_in_one_line_without_a_database(local: Local) -> None:
    local.pg_port = free_port()  # nothing listens there
    service = services((BASE,), local)["db-init"]
    done = subprocess.run(local.argv(service_command(service, image_entrypoint())), cwd=ROOT, text=True,
                          capture_output=True, timeout=60,
                          env={**local.environ(service), "ODYSSEY_DB_RETRY_SECONDS": "0"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to postgresql+psycopg://"), lines
    assert local.env["PGPASSWORD"] not in done.stderr


@pytest.mark.postgres
def test_dashboard_command_serves_the_study_database(local: Local, tmp_path: Path) -> None:
    import optuna

    dashboard = services((BASE,), local)["dashboard"]
    argv = service_command(dashboard, image_entrypoint())
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    assert run_db_init(local).returncode == 0  # as `up` does: the dashboard's role gets the tables
    optuna.create_study(study_name="visible-in-dashboard", storage=_with_password(local))
    proc = local.start(dashboard, argv, tmp_path / "dashboard.log")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                status, _ = http_get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                assert time.monotonic() < deadline, "dashboard did not answer within 90 s"
                time.sleep(0.5)
        assert status == 200
        _, body = http_get(f"http://127.0.0.1:{port}/api/studies")
        assert "visible-in-dashboard" in [s["study_name"] for s in json.loads(body)["study_summaries"]]
        # The container's healthcheck, pointed at this port.
        kind, *check = dashboard["healthcheck"]["test"]
        check = [arg.replace(f":{DASHBOARD_PORT}/", f":{port}/") for arg in check]
        assert kind == "CMD" and local.run(dashboard, check, timeout=30).returncode == 0
    finally:
        stop(proc, timeout=20)
    log = (tmp_path / "dashboard.log").read_text()
    assert local.env["PGPASSWORD"] not in log and "dashboard for postgresql+psycopg://" in log


def _with_password(local: Local) -> str:
    return f"postgresql+psycopg://{local.env['POSTGRES_USER']}:{local.env['PGPASSWORD']}@{local.pg_host}:" \
        f"{local.pg_port}/{local.env['POSTGRES_DB']}"


@pytest.mark.postgres
def test_dashboard_command_fails_in_one_line_without_a_database(local: Local) -> None:
    dashboard = services((BASE,), local)["dashboard"]
    local.pg_port = free_port()  # nothing listens there
    argv = service_command(dashboard, image_entrypoint())
    env_run = subprocess.run(local.argv(argv), cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**local.environ(dashboard), "ODYSSEY_DB_RETRY_SECONDS": "0"})
    assert env_run.returncode == 1
    lines = env_run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to postgresql+psycopg://"), lines
    assert local.env["PGPASSWORD"] not in env_run.stderr


def finished_trials(local: Local) -> Any:
    from storage.results import load_study

    return load_study(_with_password(local), TINY_STUDY).trials


@pytest.mark.postgres
@pytest.mark.slow
def test_guide_commands_and_workers_complete_a_study(local: Local, tmp_path: Path) -> None:
    entry = image_entrypoint()
    stack = services((BASE,), local)
    cli = stack["cli"]
    # The guide's `docker compose run --rm cli ARGS` lines, on the tiny spec instead of jsb-quick.
    prefix = "docker compose run --rm cli "
    lines = [line.removeprefix(prefix) for line in guide_block() if line.startswith(prefix)]
    lines = [line.replace(GUIDE_SPEC, TINY_SPEC).replace(GUIDE_STUDY, TINY_STUDY) for line in lines]
    runs = [shlex.split(line) for line in lines]
    assert [args[:2] for args in runs] == [["study", "create"], ["study", "status"], ["report", TINY_STUDY]]
    create, status, report = runs

    # As in the guide, `up` has run db-init and started the workers (waiting for studies) before the study
    # is created: the main host's worker and an extra CPU-only host's worker share the database like two
    # machines (one job on the extra host: this machine has few cores).
    assert run_db_init(local).returncode == 0
    local.env["ODYSSEY_CPU_JOBS"] = "1"
    extra = services((WORKERS, CPU), local)["worker"]
    workers = []
    for n, service in enumerate((stack["worker"], extra)):
        log = tmp_path / f"worker{n}.log"
        workers.append((local.start(service, service_command(service, entry), log), log))
    try:
        created = local.run(cli, service_command({**cli, "command": create}, entry))
        assert created.returncode == 0, created.stderr
        expected = len(finished_trials(local))
        assert expected > 0
        deadline = time.monotonic() + 300
        while True:
            trials = finished_trials(local)
            assert not (trials["state"] == "failed").any(), trials[trials["state"] == "failed"]
            if trials["state"].isin(["complete", "diverged"]).sum() == expected:
                break
            for proc, log in workers:
                assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"study not done in 300 s: {trials['state'].value_counts()}"
            time.sleep(1)
        for proc, log in workers:  # --forever: they wait for the next study instead of exiting
            assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        for proc, _ in workers:  # both at once, as `docker compose stop` on two hosts
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [stop(proc, send=False) for proc, _ in workers]
    assert codes == [0, 0], [log.read_text()[-2000:] for _, log in workers]
    for _, log in workers:
        assert local.env["PGPASSWORD"] not in log.read_text()

    shown = local.run(cli, service_command({**cli, "command": status}, entry))
    assert shown.returncode == 0 and TINY_STUDY in shown.stdout, shown.stderr
    built = local.run(cli, service_command({**cli, "command": report}, entry))
    assert built.returncode == 0, built.stderr
    page = local.reports / TINY_STUDY / "report.html"
    assert page.is_file() and page.stat().st_size > 10_000
    assert local.env["PGPASSWORD"] not in page.read_text() + built.stdout + built.stderr

    # The guide's other one-off commands (study list, query, export), in the same way.
    others = re.findall(r"`docker compose run --rm cli ([^`]+)`", (ROOT / "docs" / "docker.md").read_text())
    others = [line.replace(GUIDE_STUDY, TINY_STUDY) for line in others if line != "ARGS"]
    assert len(others) >= 3, others
    for line in others:
        done = local.run(cli, service_command({**cli, "command": shlex.split(line)}, entry))
        assert done.returncode == 0, f"{line}: {done.stderr}"
        assert local.env["PGPASSWORD"] not in done.stdout + done.stderr
    exported = local.reports / f"{TINY_STUDY}.csv"
    assert len(exported.read_text().splitlines()) == expected + 1
