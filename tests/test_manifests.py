"""deploy/kubernetes, checked offline: no cluster runs here.

Every manifest the two kustomizations build (``deploy/kubernetes``: the workloads with KEDA's
Kafka scaler; ``deploy/kubernetes/prometheus``: with its Prometheus scaler) is validated:

- Kubernetes objects against the JSON schemas of Kubernetes 1.33 that the PyPI package
  ``kubernetes-validate`` ships, strict: an unknown field fails, as it does under
  ``kubectl apply``'s server-side field validation.
- KEDA objects with the validate function that ``@kubernetes-models/keda`` (npm, KEDA 2.19's
  types; ``scripts/install-schemas.sh`` installs it into var/schemas) generated from KEDA's
  schema, run by node. That function checks types, enums and required fields but lets unknown
  fields through, so it runs on a proxy of the object that records every field it reads:
  a field it never read is one the schema does not have, reported as unknown.

Then the manifests are compared with the code they deploy: every environment variable is a
setting imgflow reads, the autoscaler targets the worker Deployment with the partition count
as its ceiling, the budget and Services select the right pods, the probes ask the view that
reports readiness. Each check returns its problems; the tests assert none for the manifests
and the expected one for a broken copy, so a check that cannot fail would show here.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import PydanticBaseSettingsSource

from imgflow.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
#: The two ways to apply it: ``kubectl apply -k`` on either folder.
KUSTOMIZATIONS = (DEPLOY, DEPLOY / "prometheus")
#: What tests here understand of a kustomization; anything else (patches, generators, ...)
#: would change the objects without these tests seeing it, so it fails until they learn it.
KUSTOMIZE_FIELDS = frozenset({"apiVersion", "kind", "namespace", "resources", "images"})

KUBERNETES_VERSION = "1.33"
KEDA_PACKAGE = ROOT / "var" / "schemas" / "node_modules" / "@kubernetes-models" / "keda"

#: Variables set for libraries imgflow runs, not for imgflow, and the module that reads each.
THIRD_PARTY_ENV = {
    "BOKEH_ALLOW_WS_ORIGIN": "bokeh.settings",  # Panel's server: allowed websocket origins
    "WATCHFILES_FORCE_POLLING": "watchfiles.main",  # the watcher on a network share
    "WATCHFILES_POLL_DELAY_MS": "watchfiles.main",
}
#: Secrets created beside the manifests (docs/deployment.md "Kubernetes"), name -> keys.
SECRETS = {
    "imgflow-secrets": {"MONGO_URL", "IMGFLOW_API_TOKEN", "IMGFLOW_COOKIE_SECRET"},
    "imgflow-dashboard-users": {"dashboard-users.json"},
}
#: Parameters of KEDA's Kafka scaler (pkg/scalers/kafka_scaler.go, KEDA 2.19): trigger
#: metadata is a free map in KEDA's schema, and a misspelled key there is silently ignored.
KAFKA_SCALER_METADATA = frozenset(
    {
        "bootstrapServers",
        "bootstrapServersFromEnv",
        "consumerGroup",
        "consumerGroupFromEnv",
        "topic",
        "topicFromEnv",
        "partitionLimitation",
        "lagThreshold",
        "activationLagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
        "excludePersistentLag",
        "scaleToZeroOnInvalidOffset",
        "limitToPartitionsWithLag",
        "ensureEvenDistributionOfPartitions",
        "version",
        "tls",
        "unsafeSsl",
        "sasl",
        "saslTokenProvider",
        "awsRegion",
    }
)
#: The topics whose lag means work for the costly stages (decode, classify).
SCALED_STAGES = ("paths", "frames", "tensors")
#: The lag metric imgflow exports per topic and partition (imgflow/metrics.py).
LAG_METRIC = "imgflow_consumer_lag"
#: The least patience a liveness probe may have: a rebalance or a stalled partition's re-seek
#: lasts seconds, and a restart would cost the group another rebalance.
MIN_LIVENESS_SECONDS = 120
#: Enough for a worker to finish its batches, commit and leave its group on SIGTERM.
MIN_WORKER_GRACE_SECONDS = 30

Doc = dict[str, Any]
Problems = list[str]


# Loading: what `kubectl apply -k` would send, for the fields listed in KUSTOMIZE_FIELDS ----


def kustomization(folder: Path) -> Doc:
    doc: Doc = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    return doc


def resource_files(folder: Path) -> list[Path]:
    """The manifest files a kustomization builds from, through the folders it lists."""
    files: list[Path] = []
    for entry in kustomization(folder).get("resources", []):
        path = (folder / entry).resolve()
        files += resource_files(path) if path.is_dir() else [path]
    return files


def load(folder: Path) -> list[Doc]:
    """Every object of a kustomization, in order."""
    docs: list[Doc] = []
    for file in resource_files(folder):
        docs += [doc for doc in yaml.safe_load_all(file.read_text(encoding="utf-8")) if doc]
    return docs


def doc_id(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def is_keda(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).startswith("keda.sh/")


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


# What a pod runs and sees ---------------------------------------------------------------


def containers(deployment: Doc) -> list[Doc]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def pod_labels(deployment: Doc) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"].get("labels") or {})


def faust_command(container: Doc) -> str | None:
    """The Faust subcommand a container runs (``worker``, ``watch``), if it runs ``faust``."""
    argv = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not argv or PurePosixPath(argv[0]).name != "faust":
        return None
    rest = iter(argv[1:])
    for arg in rest:
        if arg in ("-A", "--app", "-l", "--loglevel"):
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def role(docs: list[Doc], command: str) -> tuple[Doc, Doc]:
    """The Deployment and container that run ``faust -A imgflow <command>``."""
    found = [
        (d, c) for d in of_kind(docs, "Deployment") for c in containers(d) if faust_command(c) == command
    ]
    assert len(found) == 1, f"expected one container running `faust ... {command}`, found {len(found)}"
    return found[0]


def dashboard(docs: list[Doc]) -> tuple[Doc, Doc]:
    found = [
        (d, c)
        for d in of_kind(docs, "Deployment")
        for c in containers(d)
        if "dashboard.serve" in (c.get("command") or [])
    ]
    assert len(found) == 1, "expected one container running `python -m dashboard.serve`"
    return found[0]


def container_env(docs: list[Doc], container: Doc) -> dict[str, str | None]:
    """A container's environment as KEDA and the kubelet resolve it: ConfigMaps from envFrom,
    then env. None: a value from a Secret or the pod (known only in the cluster)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            config = one(docs, "ConfigMap", source["configMapRef"]["name"])
            env.update({str(k): str(v) for k, v in (config.get("data") or {}).items()})
    for item in container.get("env") or []:
        env[item["name"]] = str(item["value"]) if "value" in item else None
    return env


class _GivenOnly(Settings):
    """Settings from the given values alone, not from this process's environment."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[Any], init_settings: PydanticBaseSettingsSource, *args: Any, **kwargs: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_for(env: dict[str, str | None]) -> Settings:
    """The settings a container with this environment builds (secret values left out)."""
    names = settings_env_names()
    return _GivenOnly.model_validate({k: v for k, v in env.items() if k in names and v is not None})


def settings_env_names() -> set[str]:
    """Every environment variable name the settings class reads."""
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias or field_name.upper()]
        names.update(choice for choice in choices if isinstance(choice, str))
    return names


def mount_of_claim(deployment: Doc, container: Doc, claim: str) -> str | None:
    """Where a container mounts a PersistentVolumeClaim, if it does."""
    volumes = {
        v["name"]
        for v in deployment["spec"]["template"]["spec"].get("volumes") or []
        if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
    }
    paths = [m["mountPath"] for m in container.get("volumeMounts") or [] if m["name"] in volumes]
    return paths[0] if paths else None


def under(path: str | Path, folder: str) -> bool:
    return PurePosixPath(str(path)).is_relative_to(PurePosixPath(folder))


# Schemas --------------------------------------------------------------------------------


def kubernetes_problems(doc: Doc) -> Problems:
    """Kubernetes' own schema for the object's kind, strict."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return [f"/{where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


#: Runs @kubernetes-models/keda's validate function on each object (stdin: JSON) and reports
#: its errors plus the fields it never read (unknown to the schema).
KEDA_VALIDATE_JS = r"""
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const { packageDir, docs } = JSON.parse(readFileSync(0, "utf8"));

// A view of `value` that records, per JSON pointer, which of its keys were read.
function tracked(value, path, reads) {
  if (value === null || typeof value !== "object") return value;
  if (!reads.has(path)) reads.set(path, { value, keys: new Set() });
  const { keys } = reads.get(path);
  return new Proxy(value, {
    get(target, key, receiver) {
      const found = Reflect.get(target, key, receiver);
      if (typeof key !== "string" || !Object.hasOwn(target, key)) return found;
      keys.add(key);
      return tracked(found, `${path}/${key}`, reads);
    },
  });
}

const results = [];
for (const doc of docs) {
  const [group, version] = String(doc.apiVersion).split("/");
  let Model;
  try {
    const module = await import(pathToFileURL(`${packageDir}/${group}/${version}/${doc.kind}.js`).href);
    Model = module[doc.kind];
  } catch (err) {
    results.push([`no KEDA schema for ${doc.apiVersion} ${doc.kind}: ${err.message}`]);
    continue;
  }
  const reads = new Map();
  const problems = [];
  try {
    Model.prototype.validate.call(tracked(doc, "", reads));
  } catch (err) {
    problems.push(err.message);
  }
  for (const [path, { value, keys }] of reads) {
    if (Array.isArray(value)) continue;
    for (const key of Object.keys(value)) {
      if (!keys.has(key)) problems.push(`${path}/${key}: unknown field`);
    }
  }
  results.push(problems);
}
process.stdout.write(JSON.stringify(results));
"""


def keda_problems(docs: list[Doc]) -> list[Problems]:
    """KEDA's schema for each object, through node (one process for all of them)."""
    if not (KEDA_PACKAGE / "package.json").is_file():
        pytest.fail(
            f"KEDA's schemas are not installed ({KEDA_PACKAGE}): run `bash scripts/install-schemas.sh` "
            "(`make test` does)",
            pytrace=False,
        )
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is missing: it runs KEDA's validator (Debian: apt-get install nodejs)", pytrace=False
        )
    done = subprocess.run(
        [node, "--input-type=module", "-e", KEDA_VALIDATE_JS],
        input=json.dumps({"packageDir": str(KEDA_PACKAGE), "docs": docs}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"KEDA's validator failed to run: {done.stderr}"
    results: list[Problems] = json.loads(done.stdout)
    return results


def schema_problems(doc: Doc) -> Problems:
    return keda_problems([doc])[0] if is_keda(doc) else kubernetes_problems(doc)


# Cross-references: the manifests against the code and each other ------------------------


def env_problems(docs: list[Doc]) -> Problems:
    """Every variable a container gets is one imgflow (or a library it runs) reads."""
    known = settings_env_names() | set(THIRD_PARTY_ENV)
    problems = []
    configs = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    for deployment in of_kind(docs, "Deployment"):
        for container in containers(deployment):
            where = f"{doc_id(deployment)} {container['name']}"
            for source in container.get("envFrom") or []:
                name = (source.get("configMapRef") or {}).get("name")
                if name not in configs:
                    problems.append(f"{where}: envFrom {source} is not a ConfigMap of the kustomization")
            for name in container_env(docs, container):
                if name not in known:
                    problems.append(f"{where}: {name} is read by nothing imgflow runs")
            for item in container.get("env") or []:
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] not in SECRETS.get(ref["name"], set()):
                    problems.append(f"{where}: {item['name']} from {ref} is not a documented secret")
    return problems


def scaling_problems(docs: list[Doc]) -> Problems:
    """The ScaledObject drives the worker Deployment between 1 and the partition count, on
    the lag of the worker's own consumer group and topics."""
    worker, container = role(docs, "worker")
    env = container_env(docs, container)
    settings = settings_for(env)
    topics = {settings.topic(stage) for stage in SCALED_STAGES}
    scaled = of_kind(docs, "ScaledObject")
    if len(scaled) != 1:
        return [f"expected one ScaledObject, found {len(scaled)}"]
    spec = scaled[0]["spec"]
    problems = []
    target = spec["scaleTargetRef"]
    if target.get("kind", "Deployment") != "Deployment" or target["name"] != worker["metadata"]["name"]:
        problems.append(f"scaleTargetRef {target} is not the worker Deployment {doc_id(worker)}")
    source = target.get("envSourceContainerName")
    if source is not None and source != container["name"]:
        problems.append(f"envSourceContainerName {source} is not the worker container {container['name']}")
    if spec.get("minReplicaCount") != 1:
        problems.append(f"minReplicaCount {spec.get('minReplicaCount')} is not 1")
    if spec.get("maxReplicaCount") != settings.partitions:
        problems.append(
            f"maxReplicaCount {spec.get('maxReplicaCount')} is not IMGFLOW_PARTITIONS {settings.partitions}"
        )
    scaled_topics: set[str] = set()
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        if trigger["type"] == "kafka":
            unknown = set(meta) - KAFKA_SCALER_METADATA
            if unknown:
                problems.append(f"kafka trigger: {sorted(unknown)} are not parameters of KEDA's Kafka scaler")
            group = env.get(meta["consumerGroupFromEnv"]) if "consumerGroupFromEnv" in meta else None
            if (group or meta.get("consumerGroup")) != settings.app_id:
                problems.append(f"kafka trigger: consumer group is not IMGFLOW_APP_ID {settings.app_id}")
            servers = env.get(meta["bootstrapServersFromEnv"]) if "bootstrapServersFromEnv" in meta else None
            servers = servers or meta.get("bootstrapServers") or ""
            if servers.split(",") != settings.bootstrap_servers:
                problems.append(
                    f"kafka trigger: bootstrap servers {servers!r} are not BROKER_URL's host:port list"
                )
            if meta.get("allowIdleConsumers") != "false":
                problems.append(
                    'kafka trigger: allowIdleConsumers must be "false" (no worker beyond a partition)'
                )
            if not str(meta.get("lagThreshold", "")).isdecimal() or int(meta["lagThreshold"]) < 1:
                problems.append(
                    f"kafka trigger: lagThreshold {meta.get('lagThreshold')!r} is not a positive integer"
                )
            if meta.get("topic") not in topics:
                problems.append(f"kafka trigger: topic {meta.get('topic')!r} is not one of {sorted(topics)}")
            scaled_topics.add(meta.get("topic"))
        elif trigger["type"] == "prometheus":
            query = meta.get("query", "")
            if not re.search(rf"\b{LAG_METRIC}\b", query):
                problems.append(f"prometheus trigger: the query does not read {LAG_METRIC}")
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", str(meta.get("threshold", ""))) or not float(
                meta["threshold"]
            ):
                problems.append(
                    f"prometheus trigger: threshold {meta.get('threshold')!r} is not a positive number"
                )
            scaled_topics |= promql_topics(query, topics)
        else:
            problems.append(f"trigger {trigger['type']} is neither KEDA's Kafka nor its Prometheus scaler")
    if settings.topic("paths") not in scaled_topics:
        problems.append(f"no trigger scales on {settings.topic('paths')}, where every image enters")
    return problems


def promql_topics(query: str, topics: set[str]) -> set[str]:
    """The topics a PromQL query's ``topic`` matchers pick (``=~`` is anchored, as in Prometheus)."""
    picked = set()
    for op, value in re.findall(r'topic\s*(=~|=)\s*"([^"]*)"', query):
        picked |= {t for t in topics if (re.fullmatch(value, t) if op == "=~" else value == t)}
    return picked


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def selection_problems(docs: list[Doc]) -> Problems:
    """The budget covers exactly the worker pods; each Service exactly one Deployment's pods,
    on a port its container opens; the dashboard asks the worker Service."""
    worker, _ = role(docs, "worker")
    deployments = of_kind(docs, "Deployment")
    problems = []
    budgets = of_kind(docs, "PodDisruptionBudget")
    if not budgets:
        problems.append("no PodDisruptionBudget")
    for budget in budgets:
        selector = budget["spec"]["selector"].get("matchLabels") or {}
        chosen = [d for d in deployments if selects(selector, pod_labels(d))]
        if chosen != [worker]:
            problems.append(f"{doc_id(budget)} selects {[doc_id(d) for d in chosen]}, not the worker pods")
    services: dict[str, tuple[Doc, Doc]] = {}
    for service in of_kind(docs, "Service"):
        chosen = [d for d in deployments if selects(service["spec"].get("selector") or {}, pod_labels(d))]
        if len(chosen) != 1:
            problems.append(f"{doc_id(service)} selects {[doc_id(d) for d in chosen]}, not one Deployment")
            continue
        services[service["metadata"]["name"]] = (service, chosen[0])
        opened = {p.get("name") for c in containers(chosen[0]) for p in c.get("ports") or []}
        opened |= {p["containerPort"] for c in containers(chosen[0]) for p in c.get("ports") or []}
        for port in service["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in opened:
                problems.append(f"{doc_id(service)} port {port} is not a port of {doc_id(chosen[0])}")
    _, board = dashboard(docs)
    for url in settings_for(container_env(docs, board)).worker_url_list:
        parts = urlsplit(url)
        found = services.get(parts.hostname or "")
        if (
            found is None
            or found[1] is not worker
            or parts.port not in {p["port"] for p in found[0]["spec"]["ports"]}
        ):
            problems.append(f"IMGFLOW_WORKER_URLS {url} is not the worker Service")
    return problems


def workload_problems(docs: list[Doc]) -> Problems:
    """Probes ask /health/ on the web port, SIGTERM reaches the processes and has time, each
    worker keeps its tables to itself, one watcher, and every image path on the shared volume."""
    worker, container = role(docs, "worker")
    settings = settings_for(container_env(docs, container))
    problems = []
    command = [str(a) for a in container["command"]]
    if "--web-port" in command and int(command[command.index("--web-port") + 1]) != settings.web_port:
        problems.append("the worker's --web-port is not IMGFLOW_WEB_PORT")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = (container.get(probe_name) or {}).get("httpGet") or {}
        port = ports.get(get.get("port"), get.get("port"))
        if get.get("path") != "/health/" or port != settings.web_port:
            problems.append(f"worker {probe_name} does not GET /health/ on port {settings.web_port}")
    liveness = container.get("livenessProbe") or {}
    patience = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    if patience < MIN_LIVENESS_SECONDS:
        problems.append(f"worker liveness gives up after {patience} s: a rebalance would restart it")
    grace = worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if grace < MIN_WORKER_GRACE_SECONDS:
        problems.append(f"worker terminationGracePeriodSeconds {grace} is too short to commit and leave")
    env = {item["name"]: item for item in container.get("env") or []}
    web_host = (env.get("IMGFLOW_WEB_HOST") or {}).get("valueFrom") or {}
    if (web_host.get("fieldRef") or {}).get("fieldPath") != "status.podIP":
        problems.append("IMGFLOW_WEB_HOST is not the pod's IP: workers could not reach each other")
    empty_dirs = {v["name"] for v in worker["spec"]["template"]["spec"]["volumes"] if "emptyDir" in v}
    table_mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    if settings.data_dir is None or not any(under(settings.data_dir, m) for m in table_mounts):
        problems.append(
            "IMGFLOW_DATA_DIR is not on a volume of the worker's own (RocksDB locks it per process)"
        )
    for deployment in of_kind(docs, "Deployment"):
        if not deployment["spec"]["template"]["spec"].get("shareProcessNamespace"):
            problems.append(f"{doc_id(deployment)}: its process is PID 1 and may never see SIGTERM")
    watcher, _ = role(docs, "watch")
    if watcher["spec"].get("replicas") != 1 or watcher["spec"].get("strategy", {}).get("type") != "Recreate":
        problems.append("the watcher must be one pod, the old one stopped before a new one starts")
    return problems + shared_volume_problems(docs)


def claims(deployment: Doc) -> set[str]:
    volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
    return {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}


def shared_volume_problems(docs: list[Doc]) -> Problems:
    """Paths travel, not pixels: the worker, the watcher and the dashboard (previews) mount
    one volume at one path, and every image folder of the settings is on it."""
    users = {"worker": role(docs, "worker"), "watcher": role(docs, "watch"), "dashboard": dashboard(docs)}
    shared = set.intersection(*(claims(deployment) for deployment, _ in users.values()))
    if len(shared) != 1:
        return [f"expected one volume claim mounted by {sorted(users)}, found {sorted(shared)}"]
    claim = shared.pop()
    mounts = {name: mount_of_claim(d, c, claim) for name, (d, c) in users.items()}
    mount = mounts["worker"]
    if mount is None or set(mounts.values()) != {mount}:
        return [f"the shared volume {claim} is not mounted at one path everywhere: {mounts}"]
    problems = []
    for name, (_, container) in users.items():
        for path in settings_for(container_env(docs, container)).image_root_paths:
            if not under(path, mount):
                problems.append(f"{name}: image folder {path} is not on the shared volume at {mount}")
    return problems


CHECKS: dict[str, Callable[[list[Doc]], Problems]] = {
    "env": env_problems,
    "scaling": scaling_problems,
    "selection": selection_problems,
    "workloads": workload_problems,
}


# Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return load(request.param)


@pytest.fixture(scope="module")
def default_docs() -> list[Doc]:
    return load(DEPLOY)


def all_docs() -> list[tuple[str, Doc]]:
    """Each object once, named by its file, from both kustomizations."""
    seen: dict[tuple[Path, int], tuple[str, Doc]] = {}
    for folder in KUSTOMIZATIONS:
        for file in resource_files(folder):
            for index, doc in enumerate(d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d):
                seen[(file, index)] = (f"{file.relative_to(DEPLOY)}:{doc_id(doc)}", doc)
    return list(seen.values())


# Tests ------------------------------------------------------------------------------------


def test_kustomizations_use_only_what_these_tests_understand() -> None:
    for folder in sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml")):
        unknown = set(kustomization(folder)) - KUSTOMIZE_FIELDS
        assert not unknown, f"{folder}/kustomization.yaml uses {sorted(unknown)}: teach {__file__} first"


def test_every_manifest_file_is_in_a_kustomization() -> None:
    listed = {file for folder in KUSTOMIZATIONS for file in resource_files(folder)}
    present = {p.resolve() for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert present - listed == set(), "manifests no kustomization applies"
    assert listed - present == set(), "a kustomization lists files that are not there"


@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in all_docs() if not is_keda(doc)],
    ids=[i for i, d in all_docs() if not is_keda(d)],
)
def test_kubernetes_object_matches_its_schema(doc: Doc) -> None:
    assert kubernetes_problems(doc) == []


def test_keda_objects_match_kedas_schema() -> None:
    named = [(name, doc) for name, doc in all_docs() if is_keda(doc)]
    assert {name.split(":")[0] for name, _ in named} == {
        "autoscaling-kafka.yaml",
        "prometheus/autoscaling-prometheus.yaml",
    }
    results = keda_problems([doc for _, doc in named])
    assert {name: problems for (name, _), problems in zip(named, results, strict=True) if problems} == {}


@pytest.mark.parametrize("check", CHECKS)
def test_manifests_agree_with_the_code(docs: list[Doc], check: str) -> None:
    assert CHECKS[check](docs) == []


def test_config_builds_valid_settings(docs: list[Doc]) -> None:
    """What each container's environment gives imgflow parses, and BROKER_URL is a plain
    host:port list (KEDA's Kafka scaler reads the same variable, without Faust's kafka://)."""
    for deployment in of_kind(docs, "Deployment"):
        for container in containers(deployment):
            env = container_env(docs, container)
            settings = settings_for(env)
            assert "://" not in (env.get("BROKER_URL") or ""), "BROKER_URL must be host:port[,host:port]"
            assert settings.bootstrap_servers, doc_id(deployment)


@pytest.mark.parametrize("name", sorted(THIRD_PARTY_ENV))
def test_third_party_variables_are_read_by_their_library(name: str) -> None:
    spec = importlib.util.find_spec(THIRD_PARTY_ENV[name])
    assert spec is not None and spec.origin is not None
    assert name in Path(spec.origin).read_text(encoding="utf-8")


# Broken copies: each check must reject what it exists to catch ----------------------------


def _container(docs: list[Doc], command: str = "worker") -> Doc:
    return role(docs, command)[1]


def _scaled(docs: list[Doc]) -> Doc:
    return of_kind(docs, "ScaledObject")[0]


def _rename(mapping: Doc, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _set_config(docs: list[Doc], name: str, value: str) -> None:
    of_kind(docs, "ConfigMap")[0]["data"][name] = value


def _fixed_group(docs: list[Doc], group: str) -> None:
    """A trigger that names a consumer group instead of reading IMGFLOW_APP_ID."""
    meta = _scaled(docs)["spec"]["triggers"][0]["metadata"]
    del meta["consumerGroupFromEnv"]
    meta["consumerGroup"] = group


SCHEMA_BREAKS = {
    "deployment-replicas-a-word": (
        "Deployment",
        "imgflow-worker",
        lambda d: d["spec"].update(replicas="two"),
        "'two' is not of type",
    ),
    "deployment-misspelled-probe": (
        "Deployment",
        "imgflow-worker",
        lambda d: _rename(d["spec"]["template"]["spec"]["containers"][0], "readinessProbe", "readinesProbe"),
        "'readinesProbe' was unexpected",
    ),
    "budget-selector-a-string": (
        "PodDisruptionBudget",
        "imgflow-worker",
        lambda d: d["spec"].update(selector="app.kubernetes.io/component=worker"),
        "is not of type",
    ),
    "scaledobject-misspelled-field": (
        "ScaledObject",
        "imgflow-worker",
        lambda d: _rename(d["spec"], "maxReplicaCount", "maxReplicasCount"),
        "/spec/maxReplicasCount: unknown field",
    ),
    "scaledobject-interval-with-unit": (
        "ScaledObject",
        "imgflow-worker",
        lambda d: d["spec"].update(pollingInterval="15s"),
        "pollingInterval must be integer",
    ),
    "scaledobject-trigger-without-type": (
        "ScaledObject",
        "imgflow-worker",
        lambda d: d["spec"]["triggers"][0].pop("type"),
        "triggers/0 must have required property type",
    ),
}


@pytest.mark.parametrize("case", SCHEMA_BREAKS)
def test_schemas_reject_a_broken_manifest(default_docs: list[Doc], case: str) -> None:
    kind, name, breaks, expected = SCHEMA_BREAKS[case]
    doc = copy.deepcopy(one(default_docs, kind, name))
    assert schema_problems(doc) == [], "the intact object must pass first"
    breaks(doc)
    problems = schema_problems(doc)
    assert any(expected in p for p in problems), problems


CHECK_BREAKS: dict[str, tuple[str, Callable[[list[Doc]], None], str]] = {
    "env-misspelled-setting": (
        "env",
        lambda docs: _set_config(docs, "IMGFLOW_PARTITION", "16"),
        "IMGFLOW_PARTITION is read by nothing",
    ),
    "env-undocumented-secret": (
        "env",
        lambda docs: _container(docs)["env"][-1]["valueFrom"]["secretKeyRef"].update(key="TOKEN"),
        "is not a documented secret",
    ),
    "scaling-past-the-partitions": (
        "scaling",
        lambda docs: _scaled(docs)["spec"].update(maxReplicaCount=16),
        "maxReplicaCount 16 is not IMGFLOW_PARTITIONS 8",
    ),
    "scaling-another-deployment": (
        "scaling",
        lambda docs: _scaled(docs)["spec"]["scaleTargetRef"].update(name="imgflow-dashboard"),
        "is not the worker Deployment",
    ),
    "scaling-another-group": (
        "scaling",
        lambda docs: _fixed_group(docs, "imgflow-old"),
        "consumer group is not IMGFLOW_APP_ID imgflow",
    ),
    "scaling-misspelled-threshold": (
        "scaling",
        lambda docs: _rename(_scaled(docs)["spec"]["triggers"][0]["metadata"], "lagThreshold", "lagTreshold"),
        "['lagTreshold'] are not parameters",
    ),
    "budget-on-the-dashboard": (
        "selection",
        lambda docs: one(docs, "PodDisruptionBudget", "imgflow-worker")["spec"]["selector"][
            "matchLabels"
        ].update({"app.kubernetes.io/component": "dashboard"}),
        "not the worker pods",
    ),
    "dashboard-asks-nobody": (
        "selection",
        lambda docs: _env_item(dashboard(docs)[1], "IMGFLOW_WORKER_URLS").update(value="http://worker:6066"),
        "is not the worker Service",
    ),
    "readiness-on-another-path": (
        "workloads",
        lambda docs: _container(docs)["readinessProbe"]["httpGet"].update(path="/metrics"),
        "readinessProbe does not GET /health/",
    ),
    "two-watchers": (
        "workloads",
        lambda docs: role(docs, "watch")[0]["spec"].update(replicas=2),
        "the watcher must be one pod",
    ),
    "inbox-off-the-shared-volume": (
        "workloads",
        lambda docs: _set_config(docs, "IMGFLOW_WATCH_DIRS", "/srv/inbox"),
        "image folder /srv/inbox is not on the shared volume at /data",
    ),
    "prometheus-query-without-paths": (
        "scaling",
        lambda docs: _scaled(docs)["spec"]["triggers"][0]["metadata"].update(
            query='sum(imgflow_consumer_lag{topic="imgflow-tensors"})'
        ),
        "no trigger scales on imgflow-paths",
    ),
    "tables-on-the-shared-volume": (
        "workloads",
        lambda docs: _env_item(_container(docs), "IMGFLOW_DATA_DIR").update(value="/data/tables"),
        "IMGFLOW_DATA_DIR is not on a volume of the worker's own",
    ),
}


def _env_item(container: Doc, name: str) -> Doc:
    item: Doc = next(i for i in container["env"] if i["name"] == name)
    return item


@pytest.mark.parametrize("case", CHECK_BREAKS)
def test_cross_checks_reject_a_broken_copy(case: str) -> None:
    check, breaks, expected = CHECK_BREAKS[case]
    broken = load(DEPLOY / "prometheus" if case.startswith("prometheus-") else DEPLOY)
    breaks(broken)
    problems = CHECKS[check](broken)
    assert any(expected in p for p in problems), problems
