"""docker-compose.yml, the Dockerfile and .dockerignore agree with the CLI and the settings.

`docker-compose config` (Debian's docker-compose, installed by scripts/ensure-tools.sh) validates
and resolves the compose file without a Docker engine; the resolved file is read as JSON through
docker-compose's own Python, which carries PyYAML.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest

from worker.cli import main
from worker.settings import Settings, describe
from worker.simulator import DEFAULT_KEY
from worker.tasks import ACQUIRE_MAX_WAIT_SECONDS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
OUR_SERVICES = ("migrate", "worker", "beat", "simulator")
KEY_VALUE = re.compile(r"wahero_(?:live|test)_[A-Za-z0-9_]+")


def _compose_bin() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        message = "docker-compose is not installed (scripts/ensure-tools.sh installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _compose(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """docker-compose on the repo's file with only the given variables (a local .env ignored)."""
    empty_env_file = tmp / "empty.env"
    empty_env_file.write_text("")
    return subprocess.run(
        [
            _compose_bin(),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(empty_env_file),
            "-f",
            str(COMPOSE),
            *args,
        ],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as docker-compose resolves it, as a dict."""
    tmp = tmp_path_factory.mktemp("compose")
    result = _compose(tmp, "config", POSTGRES_PASSWORD="only-for-this-test")
    assert result.returncode == 0, result.stderr
    # docker-compose is a Python program; its interpreter has PyYAML (our venv need not).
    interpreter = Path(_compose_bin()).read_text(errors="replace").splitlines()[0][2:].strip()
    as_json = subprocess.run(
        [
            *interpreter.split(),
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=result.stdout,
        capture_output=True,
        text=True,
        check=True,
    )
    config: dict[str, Any] = json.loads(as_json.stdout)
    return config


def _seconds(duration: str) -> float:
    """A compose duration (`60s`, `1m30s`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    return sum(float(n) * scale[unit] for n, unit in parts)


def _resolve_cli(argv: list[str]) -> click.Command:
    """Parse argv against the real `wahero-bulk` CLI (without running it); bad input raises."""
    assert argv[0] == "wahero-bulk", argv
    command: click.Command = main
    args = argv[1:]
    while isinstance(command, click.Group):
        assert args, f"{argv}: a group needs a subcommand"
        name = args.pop(0)
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"{argv}: `{name}` is not a wahero-bulk command"
        command = found
    command.make_context(argv[0], list(args))
    return command


def test_compose_file_is_valid_and_needs_a_database_password(tmp_path: Path) -> None:
    assert _compose(tmp_path, "config", "-q", POSTGRES_PASSWORD="x").returncode == 0
    missing = _compose(tmp_path, "config", "-q")
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr


def test_services_roles_and_profiles(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == {"postgres", "redis", "migrate", "worker", "beat", "simulator"}
    assert services["simulator"]["profiles"] == ["trial"]
    assert all("profiles" not in services[name] for name in set(services) - {"simulator"})
    # Scalable with --scale worker=N: nothing that pins one container.
    assert "container_name" not in services["worker"]
    assert "ports" not in services["worker"]
    assert "version" not in resolved or resolved["version"].startswith("3")


def test_every_command_is_a_real_cli_command(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    expected = {
        "migrate": ["wahero-bulk", "db", "upgrade"],
        "worker": ["wahero-bulk", "worker"],
        "beat": ["wahero-bulk", "beat"],
        "simulator": ["wahero-bulk", "simulate", "--host", "0.0.0.0", "--port", "8099"],
    }
    for name, argv in expected.items():
        assert services[name]["command"] == argv
    checked = 0
    for name in OUR_SERVICES:
        _resolve_cli(list(services[name]["command"]))
        test = services[name].get("healthcheck", {}).get("test", [])
        if "wahero-bulk" in test:
            _resolve_cli(test[test.index("wahero-bulk") :])
            checked += 1
    assert checked == 2  # worker and beat
    assert services["worker"]["healthcheck"]["test"][1:] == ["wahero-bulk", "health", "--worker"]
    assert services["migrate"]["healthcheck"]["test"] == ["NONE"]


def test_environment_holds_only_known_settings_and_all_of_them(resolved: dict[str, Any]) -> None:
    known = {name for name, _, _ in describe()}
    services = resolved["services"]
    for name in ("migrate", "worker", "beat"):
        env = services[name]["environment"]
        unknown = set(env) - known
        assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"
        assert "WAHERO_API_KEY" not in env
    # A setting added later must reach the containers too (the key comes as a file instead).
    missing = known - {"WAHERO_API_KEY"} - set(services["worker"]["environment"])
    assert not missing, f"docker-compose.yml does not pass {sorted(missing)}"


def test_key_is_a_secret_file_for_the_worker_only(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    worker = services["worker"]
    assert worker["environment"]["WAHERO_API_KEY_FILE"] == "/run/secrets/wahero_api_key"
    assert [s["source"] for s in worker["secrets"]] == ["wahero_api_key"]
    assert "wahero_api_key" in resolved["secrets"]
    for name in ("migrate", "beat", "simulator"):
        assert "secrets" not in services[name]
        assert "WAHERO_API_KEY_FILE" not in services[name].get("environment", {})


def test_start_order_restarts_and_grace(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in ("worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert services[name]["restart"] in {"unless-stopped", "always"}
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    # Warm shutdown must outlast a job's limiter wait and one request, plus a margin to record.
    defaults = Settings.model_fields
    request = float(defaults["connect_timeout"].default) + float(defaults["read_timeout"].default)
    needed = ACQUIRE_MAX_WAIT_SECONDS + request + 5
    assert _seconds(services["worker"]["stop_grace_period"]) >= needed
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_redis_persists_the_queue_and_never_evicts(resolved: dict[str, Any]) -> None:
    redis = resolved["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data:rw") or v.endswith(":/data") for v in redis["volumes"])
    assert any("/var/lib/postgresql/data" in v for v in resolved["services"]["postgres"]["volumes"])


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def test_dockerfile_runs_as_non_root_with_a_worker_healthcheck() -> None:
    rows = _dockerfile_instructions()
    froms = [rest for word, rest in rows if word == "FROM"]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    users = [rest for word, rest in rows if word == "USER"]
    assert users, "the image must not run as root"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}
    # The USER comes after the last FROM: it applies to the final image.
    last_from = max(i for i, (word, _) in enumerate(rows) if word == "FROM")
    assert any(word == "USER" for word, _ in rows[last_from:])
    health = [rest for word, rest in rows if word == "HEALTHCHECK"]
    assert len(health) == 1 and '"wahero-bulk", "health", "--worker"' in health[0]
    assert any(word == "RUN" and re.search(r"pip install .*\s\.$", rest) for word, rest in rows)


def test_build_context_is_exactly_what_the_dockerfile_copies() -> None:
    copied = set()
    for word, rest in _dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            copied.update(rest.split()[:-1])
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "ignore everything, then re-include what the build copies"
    assert {line[1:] for line in lines if line.startswith("!")} == copied
    assert {"**/.env", "**/secrets"} <= set(lines)


def test_no_key_or_password_in_deploy_files() -> None:
    for path in (COMPOSE, DOCKERFILE, DOCKERIGNORE):
        text = path.read_text()
        assert not KEY_VALUE.search(text), f"{path.name} holds a Wahero key"
        assert not re.search(r"WAHERO_API_KEY\s*[=:]", text), f"{path.name} sets WAHERO_API_KEY"
        # A URL with a literal password (user:secret@host) instead of ${POSTGRES_PASSWORD}.
        assert not re.search(r"://[^/\s:$]+:[^@\s$]+@", text), path.name
    for word, rest in _dockerfile_instructions():
        if word in {"ENV", "ARG"}:
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", rest, re.I), rest
    compose = COMPOSE.read_text()
    for match in re.finditer(r"^\s*(\w*(?:PASSWORD|SECRET|TOKEN)\w*):\s*(\S.*)$", compose, re.M):
        assert match.group(2).strip('"').startswith("${"), match.group(0)


def test_image_sources_hold_no_real_key() -> None:
    found = []
    for folder in ("worker", "models", "migrations"):
        for path in (ROOT / folder).rglob("*.py"):
            found += [(path.name, key) for key in KEY_VALUE.findall(path.read_text())]
    # The simulator's own fake key is the only one, by design (it is no Wahero key).
    assert {key for _, key in found} <= {DEFAULT_KEY}
    assert all(not key.startswith("wahero_live_") for _, key in found)
