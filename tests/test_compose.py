"""docker-compose.yml and the Dockerfile, checked by construction.

No Docker engine is needed: the files are parsed and their properties compared with the settings
class, so a deployment that cannot work (unknown variable, wrong host, message limit below
imgflow's, a volume not shared by every node that resolves paths, ...) fails here first.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from imgflow.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

KAFKA = "kafka"
MONGO = "mongo"
IMGFLOW_SERVICES = ("worker", "api", "simulator", "watcher", "dashboard")
# The only services the host may reach, and the container port each publishes.
PUBLISHED = {"dashboard": 5006, "api": 6066}
SERVICES = (KAFKA, MONGO, *IMGFLOW_SERVICES)
# Read by the dashboard itself, not a Settings field.
EXTRA_ENV = frozenset({"IMGFLOW_WORKER_URLS"})
REQUIRED_ENV = ("BROKER_URL", "MONGO_URL", "MONGO_DB", "IMGFLOW_MODEL")
LOOPBACK = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
# ``${NAME:?message}``: Compose refuses to start while NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}")


# Parsing helpers -------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    """Every environment variable name the settings class reads."""
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(field_name.upper())
    return names


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, from either Compose syntax (mapping or list)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): None if v is None else str(v) for k, v in env.items()}
    pairs: dict[str, str | None] = {}
    for item in env:
        key, sep, value = str(item).partition("=")
        pairs[key] = value if sep else None
    return pairs


def mounts(service: dict[str, Any]) -> set[tuple[str, str]]:
    """``(source, target)`` of a service's volumes, from short or long syntax."""
    found = set()
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found.add((str(volume.get("source", "")), str(volume["target"])))
        else:
            parts = str(volume).split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            found.add((source, target))
    return found


def hosts(url: str) -> list[tuple[str, int | None]]:
    """``(host, port)`` pairs of a URL that may list several hosts (Kafka, MongoDB)."""
    rest = url.split("://", 1)[1] if "://" in url else url
    # Credentials first: they may be ${VAR:?message} references, which hold "?".
    netloc = rest.rsplit("@", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    pairs: list[tuple[str, int | None]] = []
    for hostport in netloc.replace(";", ",").split(","):
        host, sep, port = hostport.strip().rpartition(":")
        pairs.append((host, int(port)) if sep else (port, None))
    return pairs


def required_variable(value: str | None) -> str | None:
    """The variable a value is made of, if it is exactly a required ``${NAME:?...}``."""
    match = REQUIRED_VARIABLE.fullmatch(value or "")
    return match.group(1) if match else None


def container_port(spec: Any) -> int:
    """The container side of a ``ports`` entry, short (``[ip:]host:container``) or long syntax."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).rsplit(":", 1)[-1].split("/")[0])


def settings_for(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container with exactly this environment would build."""
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    return Settings()


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The image's environment after all ``ENV`` instructions."""
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword != "ENV":
            continue
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV NAME value with spaces
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            name, _, value = token.partition("=")
            env[name] = value
    return env


def model_build_out(instructions: list[tuple[str, str]]) -> tuple[int, PurePosixPath]:
    """Index of the RUN that builds the default model, and its ``--out`` folder."""
    for index, (keyword, args) in enumerate(instructions):
        if keyword != "RUN":
            continue
        for command in args.split("&&"):
            tokens = shlex.split(command)
            if "build-model" in tokens and "--out" in tokens:
                return index, PurePosixPath(tokens[tokens.index("--out") + 1])
    raise AssertionError("no RUN builds the default model (faust -A imgflow build-model --out)")


# Fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


# Compose ---------------------------------------------------------------------------------


def test_compose_has_all_services(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert "version" not in compose, "Compose spec files have no top-level version key"
    missing = set(SERVICES) - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_worker_runs_two_replicas(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert (worker.get("deploy") or {}).get("replicas") == 2
    # Replicas cannot share a fixed container name.
    assert "container_name" not in worker


def test_the_api_is_one_more_worker_like_the_others(services: dict[str, dict[str, Any]]) -> None:
    api, worker = services["api"], services["worker"]
    assert (api.get("deploy") or {}).get("replicas") == 1, "one published port fits one replica"
    assert api["command"] == worker["command"] and environment(api) == environment(worker)
    assert api.get("healthcheck") == worker.get("healthcheck")


def test_only_the_dashboard_and_one_worker_port_are_published(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert set(published) == set(PUBLISHED), f"services published to the host: {sorted(published)}"
    for name, ports in published.items():
        assert [container_port(p) for p in ports] == [PUBLISHED[name]], f"{name}: {ports}"
    web_port = settings_for(environment(services["api"]), monkeypatch).web_port
    assert web_port == PUBLISHED["api"], "the api publishes another port than its web server's"


def test_mongodb_requires_credentials_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    mongo = environment(services[MONGO])
    user = required_variable(mongo.get("MONGO_INITDB_ROOT_USERNAME"))
    password = required_variable(mongo.get("MONGO_INITDB_ROOT_PASSWORD"))
    assert user and password, "MongoDB's root user must come from required ${...:?} variables"
    assert not services[MONGO].get("ports")
    for name in IMGFLOW_SERVICES:
        url = environment(services[name])["MONGO_URL"] or ""
        userinfo = url.split("://", 1)[1].rsplit("@", 1)[0] if "@" in url else ""
        pair = re.fullmatch(r"(\$\{[^}]*\}):(\$\{[^}]*\})", userinfo)
        login, secret = pair.groups() if pair else ("", "")
        assert required_variable(login) == user and required_variable(secret) == password, (
            f"{name}: MONGO_URL does not log in as MongoDB's root user ({url})"
        )
        assert "authSource=admin" in url, f"{name}: the root user lives in the admin database"


def test_api_token_and_dashboard_login_are_on(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in IMGFLOW_SERVICES:
        env = environment(services[name])
        assert required_variable(env.get("IMGFLOW_API_TOKEN")), f"{name}: IMGFLOW_API_TOKEN is not required"
    assert settings_for(environment(services["api"]), monkeypatch).api_protect_reads

    dashboard = services["dashboard"]
    command = dashboard.get("command") or []
    assert command[:3] == ["python", "-m", "dashboard.serve"], "the dashboard is not started with its login"
    origins = [command[i + 1] for i, arg in enumerate(command) if arg == "--allow-websocket-origin"]
    assert origins and "*" not in origins, "any web site could open the dashboard's websocket"
    env = environment(dashboard)
    assert required_variable(env.get("IMGFLOW_COOKIE_SECRET")), "IMGFLOW_COOKIE_SECRET is not required"
    auth_file = PurePosixPath(env.get("IMGFLOW_DASHBOARD_AUTH_FILE") or "")
    assert auth_file.parent == PurePosixPath("/run/secrets"), f"credentials not from a secret: {auth_file}"
    assert auth_file.name in (dashboard.get("secrets") or []), f"dashboard does not mount {auth_file.name}"
    source = ((compose.get("secrets") or {}).get(auth_file.name) or {}).get("file") or ""
    assert source.startswith("${"), f"the credentials file's location is not configurable: {source}"


def test_imgflow_services_run_the_project_image(services: dict[str, dict[str, Any]]) -> None:
    images = set()
    for name in IMGFLOW_SERVICES:
        service = services[name]
        build = service.get("build")
        assert build is not None, f"{name} is not built from the Dockerfile"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE.resolve(), name
        images.add(service.get("image"))
    assert len(images) == 1, f"worker, simulator and dashboard use different images: {images}"


def test_one_watcher_with_a_persistent_journal(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = services["watcher"]
    # Several watchers of one folder would each send every file.
    assert (watcher.get("deploy") or {}).get("replicas", 1) == 1
    command = watcher.get("command") or []
    assert command[:3] == ["faust", "-A", "imgflow"] and "watch" in command
    settings = settings_for(environment(watcher), monkeypatch)
    assert settings.watch_paths, "watcher: IMGFLOW_WATCH_DIRS is not set"
    # The journal (IMGFLOW_HOME/watcher) must survive a container restart: on a named volume.
    named = set(compose.get("volumes") or {})
    home = PurePosixPath(settings.home.as_posix())
    assert any(source in named and home.is_relative_to(target) for source, target in mounts(watcher)), (
        f"watcher: IMGFLOW_HOME={home} is not on a named volume"
    )


@pytest.mark.parametrize("name", IMGFLOW_SERVICES)
def test_imgflow_environment_names_are_settings(services: dict[str, dict[str, Any]], name: str) -> None:
    env = environment(services[name])
    unknown = set(env) - settings_env_names() - EXTRA_ENV
    assert not unknown, f"{name}: variables that imgflow does not read: {sorted(unknown)}"
    for required in REQUIRED_ENV:
        assert env.get(required), f"{name}: {required} is not set"


@pytest.mark.parametrize("name", IMGFLOW_SERVICES)
def test_imgflow_environment_values_are_valid(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_for(environment(services[name]), monkeypatch)  # raises on a value it cannot parse


@pytest.mark.parametrize("name", IMGFLOW_SERVICES)
def test_urls_name_the_services(services: dict[str, dict[str, Any]], name: str) -> None:
    env = environment(services[name])
    broker = hosts(env["BROKER_URL"] or "")
    assert broker and all(host == KAFKA for host, _ in broker), f"{name}: BROKER_URL {env['BROKER_URL']}"
    mongo = hosts(env["MONGO_URL"] or "")
    assert mongo and all(host == MONGO for host, _ in mongo), f"{name}: MONGO_URL {env['MONGO_URL']}"

    # Every bootstrap address must be one Kafka advertises inside the network.
    advertised = environment(services[KAFKA]).get("KAFKA_ADVERTISED_LISTENERS") or ""
    endpoints = {hosts(listener)[0] for listener in advertised.split(",") if listener.strip()}
    for host, port in broker:
        assert (host, port or 9092) in endpoints, f"{name}: {host}:{port} is not advertised by Kafka"

    for key, value in env.items():
        if key.endswith("_URL") or key.endswith("_URLS"):
            for url in (value or "").split(","):
                for host, _ in hosts(url):
                    assert host not in LOOPBACK, f"{name}: {key} points at loopback ({url})"


def test_dashboard_reaches_the_workers(services: dict[str, dict[str, Any]]) -> None:
    urls = environment(services["dashboard"]).get("IMGFLOW_WORKER_URLS") or ""
    worker_port = int(environment(services["worker"]).get("IMGFLOW_WEB_PORT") or 6066)
    assert urls.strip(), "dashboard: IMGFLOW_WORKER_URLS is not set"
    for url in urls.split(","):
        assert url.strip().startswith("http://"), url
        assert hosts(url) == [("worker", worker_port)], f"dashboard: {url} is not a worker web port"
    # Other containers can reach the worker's web server only if it listens beyond loopback.
    assert environment(services["worker"]).get("IMGFLOW_WEB_BIND") == "0.0.0.0"


def test_kafka_accepts_the_largest_imgflow_message(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = environment(services[KAFKA])
    message_max = int(kafka.get("KAFKA_MESSAGE_MAX_BYTES") or 1048588)  # Kafka's default
    replica_fetch_max = int(kafka.get("KAFKA_REPLICA_FETCH_MAX_BYTES") or 1048576)
    assert message_max >= Settings.model_fields["max_message_bytes"].default
    for name in IMGFLOW_SERVICES:
        allowed = settings_for(environment(services[name]), monkeypatch).max_message_bytes
        assert message_max >= allowed, f"{name} may send {allowed} bytes, Kafka accepts {message_max}"
    assert replica_fetch_max >= message_max


def test_kafka_is_a_single_kraft_node(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = environment(services[KAFKA])
    assert {"broker", "controller"} <= set((kafka.get("KAFKA_PROCESS_ROLES") or "").split(","))
    node_id = kafka.get("KAFKA_NODE_ID")
    assert node_id and f"{node_id}@{KAFKA}:" in (kafka.get("KAFKA_CONTROLLER_QUORUM_VOTERS") or "")
    assert kafka.get("CLUSTER_ID"), "the apache/kafka image needs CLUSTER_ID in KRaft mode"
    assert kafka.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "true"
    assert kafka.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "1"
    # Reachable inside the Compose network only: nothing advertised for the host.
    assert all(host == KAFKA for host, _ in hosts(kafka.get("KAFKA_ADVERTISED_LISTENERS") or ""))
    # A topic created by a first send gets as many partitions as Faust would declare.
    partitions = settings_for(environment(services["worker"]), monkeypatch).partitions
    num_partitions = int(kafka.get("KAFKA_NUM_PARTITIONS") or 1)  # Kafka's default
    assert num_partitions == partitions, "KAFKA_NUM_PARTITIONS differs from IMGFLOW_PARTITIONS"


def test_services_wait_for_healthy_backends(services: dict[str, dict[str, Any]]) -> None:
    for name in (KAFKA, MONGO):
        assert (services[name].get("healthcheck") or {}).get("test"), f"{name} has no healthcheck"
    mongo_check = " ".join(services[MONGO]["healthcheck"]["test"])
    assert "mongosh" in mongo_check and "ping" in mongo_check
    depends = services["worker"].get("depends_on") or {}
    for name in (KAFKA, MONGO):
        assert isinstance(depends, dict) and name in depends, f"worker does not depend on {name}"
        assert depends[name].get("condition") == "service_healthy", f"worker does not wait for {name}"


def test_image_folders_are_on_one_shared_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    named = set(compose.get("volumes") or {})
    shared = set.intersection(*(mounts(services[name]) for name in IMGFLOW_SERVICES))
    shared = {(source, target) for source, target in shared if source in named}
    assert shared, "worker, simulator and dashboard do not mount one named volume at one path"
    targets = [PurePosixPath(target) for _, target in shared]
    for name in IMGFLOW_SERVICES:
        env = environment(services[name])
        settings = settings_for(env, monkeypatch)
        folders = {
            "IMGFLOW_DATASET_DIR": settings.dataset_path,
            "IMGFLOW_UPLOAD_DIR": settings.upload_path,
        }
        folders.update({f"IMGFLOW_WATCH_DIRS[{i}]": p for i, p in enumerate(settings.watch_paths)})
        for key in ("IMGFLOW_DATASET_DIR", "IMGFLOW_UPLOAD_DIR"):
            assert env.get(key), f"{name}: {key} is not set"
        for key, folder in folders.items():
            path = PurePosixPath(folder.as_posix())
            assert any(path.is_relative_to(t) for t in targets), f"{name}: {key}={path} is not shared"

    # Workers read only inside their image roots: every folder a source sends from is one.
    worker_settings = settings_for(environment(services["worker"]), monkeypatch)
    roots = [PurePosixPath(p.as_posix()) for p in worker_settings.image_root_paths]
    for name in ("simulator", "watcher", "api"):
        settings = settings_for(environment(services[name]), monkeypatch)
        for folder in (settings.dataset_path, settings.upload_path, *settings.watch_paths):
            path = PurePosixPath(folder.as_posix())
            assert any(path.is_relative_to(r) for r in roots), f"{name}: workers would refuse {path}"


def test_each_worker_replica_keeps_its_own_table_state(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB locks its files per process: replicas must not share a data dir on a volume."""
    worker = services["worker"]
    settings = settings_for(environment(worker), monkeypatch)
    assert settings.table_store == "rocksdb://"
    assert settings.data_dir is not None, "worker: IMGFLOW_DATA_DIR is not set"
    data_dir = PurePosixPath(settings.data_dir.as_posix())
    for _, target in mounts(worker):
        assert not data_dir.is_relative_to(PurePosixPath(target)), f"worker: {data_dir} is on a shared volume"
    # The runtime user owns it: the Dockerfile's home directory.
    assert data_dir.is_relative_to("/home/imgflow")


# Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_installs_the_project_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    assert dockerfile[0][0] == "FROM" and dockerfile[0][1].startswith("python:3.11-slim")
    runs = [args for keyword, args in dockerfile if keyword == "RUN"]
    installs = [
        shlex.split(cmd)
        for run in runs
        for cmd in run.split("&&")
        if shlex.split(cmd)[:2] == ["pip", "install"]
    ]
    # The lock's production set, hash-checked, then the project alone: no extras, no resolution.
    locked = next((argv for argv in installs if "--require-hashes" in argv), None)
    assert locked and locked[locked.index("-r") + 1] == "/tmp/requirements.txt", installs
    copies = [args.split() for keyword, args in dockerfile if keyword == "COPY"]
    assert ["requirements/prod.txt", "/tmp/requirements.txt"] in copies
    assert ["pip", "install", "--no-deps", "."] in installs, (
        "the Dockerfile does not `pip install --no-deps .`"
    )
    users = [args for keyword, args in dockerfile if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    cmds = [args for keyword, args in dockerfile if keyword == "CMD"]
    assert cmds and yaml.safe_load(cmds[-1]) == ["faust", "-A", "imgflow", "worker", "-l", "info"]


def test_dockerfile_builds_the_model_that_compose_uses(
    dockerfile: list[tuple[str, str]], services: dict[str, dict[str, Any]]
) -> None:
    build_index, out = model_build_out(dockerfile)
    install_index = next(
        i
        for i, (keyword, args) in enumerate(dockerfile)
        if keyword == "RUN" and "pip install --no-deps ." in args
    )
    assert install_index < build_index, "the model is built before the project is installed"
    spec = dockerfile_env(dockerfile).get("IMGFLOW_MODEL")
    assert spec, "the Dockerfile does not set IMGFLOW_MODEL"
    assert PurePosixPath(spec) == out / "model.toml"
    for name in IMGFLOW_SERVICES:
        assert environment(services[name]).get("IMGFLOW_MODEL") == spec, name


def test_build_context_keeps_the_project() -> None:
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    tops = [pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = ["pyproject.toml", "requirements", "requirements/prod.txt", *tops]
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in needed:
        ignored = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(name, p)]
        assert not ignored, f".dockerignore drops {name} ({ignored})"
