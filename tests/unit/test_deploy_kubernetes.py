"""deploy/kubernetes: every manifest checked offline against the Kubernetes API schemas
(kubernetes-validate ships them), the Strimzi resources against shared/topics.py and the
services' settings, and each service's Deployment for what running it on a cluster needs:
probes on its port, a non-root user, requests and limits, a disruption budget, and every
setting production refuses to start without. No cluster, no network: a few seconds."""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from shared.settings import (
    BillingSettings,
    CheckinSettings,
    CommonSettings,
    FlowSettings,
    InsecureConfiguration,
    NotificationsSettings,
    hash_token,
)
from shared.topics import ALL_TOPICS, DEAD_LETTER

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
# the oldest Kubernetes the manifests promise to fit, and the newest the library knows
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
STRIMZI_API = "kafka.strimzi.io/v1beta2"
SETTINGS: dict[str, type[CommonSettings]] = {
    "checkin": CheckinSettings, "flow": FlowSettings,
    "notifications": NotificationsSettings, "billing": BillingSettings,
}
# kinds checked here by their fields, as kubernetes-validate has no schema for them
CUSTOM_KINDS = {
    STRIMZI_API: {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"},
    "monitoring.coreos.com/v1": {"ServiceMonitor"},
    "kustomize.config.k8s.io/v1beta1": {"Kustomization"},
}


def _default(settings: type[CommonSettings], field: str) -> Any:
    return settings.model_fields[field].default


PORTS = {name: _default(cls, f"{name}_port") for name, cls in SETTINGS.items()}


# ------------------------------------------------------------------ reading the manifests


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in load(path)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """A strategic merge as far as these patches need it: maps merge, the rest replaces."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc["spec"]["template"]["spec"]


def render(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` would send, for the kustomization features these
    folders use (resources, namespace, images, replicas, patches); any other feature fails
    here rather than going unchecked."""
    kustomization = load(folder / "kustomization.yaml")[0]
    unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "resources", "images",
                                    "replicas", "patches"}
    assert not unknown, f"{folder}: kustomization fields this test cannot render: {unknown}"
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        assert path.exists(), f"{folder}/kustomization.yaml names {entry}, which is not there"
        docs += render(path) if path.is_dir() else copy.deepcopy(load(path))
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{folder}: only patches by path are rendered here"
        for change in load(folder / patch["path"]):
            merge(one(docs, change["kind"], change["metadata"]["name"]), change)
    for image in kustomization.get("images", []):
        for spec in pod_specs(docs):
            for container in spec["containers"]:
                name, _, tag = container["image"].rpartition(":")
                if name == image["name"]:
                    container["image"] = (f"{image.get('newName', name)}:"
                                          f"{image.get('newTag', tag)}")
    for replicas in kustomization.get("replicas", []):
        one(docs, "Deployment", replicas["name"])["spec"]["replicas"] = replicas["count"]
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


@pytest.fixture(scope="module")
def app() -> list[dict[str, Any]]:
    """The production overlay as it would be applied."""
    return render(DEPLOY / "overlays" / "production")


@pytest.fixture(scope="module")
def kafka() -> list[dict[str, Any]]:
    return render(DEPLOY / "kafka")


@pytest.fixture(scope="module", autouse=True)
def schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads its schema files on every call; read each once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kubernetes_validate.utils, "schema_contents",
                      functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents))
        yield


def schema_problems(doc: dict[str, Any], version: str) -> str | None:
    """None when ``doc`` is valid for Kubernetes ``version`` (strict: no unknown field)."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        return f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}"
    return None


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def probe_problems(deployment: dict[str, Any], port: int) -> list[str]:
    """What is wrong with a Deployment's probes: liveness on /healthz, readiness on /readyz,
    both on the service's port (by number, or by the name of a port that has it)."""
    container = container_of(deployment)
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    problems = []
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{probe}: no httpGet")
            continue
        target = named.get(get.get("port"), get.get("port"))
        if get.get("path") != path:
            problems.append(f"{probe} asks {get.get('path')!r}, not {path}")
        if target != port:
            problems.append(f"{probe} asks port {get.get('port')!r}, not {port}")
    return problems


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?$")
UNITS = {None: 1.0, "m": 0.001, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}


def quantity(value: str | int) -> float:
    match = QUANTITY.match(str(value))
    assert match, f"unexpected quantity {value!r}"
    return float(match.group(1)) * UNITS[match.group(2)]


def dockerfile_uid() -> int:
    text = (REPO / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", text)
    assert uid and re.search(rf"^USER {uid.group(1)}$", text, re.M)
    return int(uid.group(1))


# ------------------------------------------------------------------ Kubernetes schemas


def test_every_manifest_is_valid_for_kubernetes_1_30_and_the_newest(
        app: list[dict[str, Any]]) -> None:
    problems, checked = [], 0
    rendered = [(DEPLOY / "overlays" / "production", doc) for doc in app]
    for path, doc in all_documents() + rendered:
        api, kind = doc.get("apiVersion"), doc.get("kind")
        if kind in CUSTOM_KINDS.get(api, set()):
            continue  # checked below, field by field
        for version in KUBERNETES_VERSIONS:
            try:
                problem = schema_problems(doc, version)
            except kubernetes_validate.SchemaNotFoundError:
                problem = f"{api} {kind}: no schema, and no check of its own here"
            if problem:
                problems.append(f"{path.relative_to(REPO)} ({version}): {problem}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 2 * 30


def test_a_broken_manifest_is_caught(app: list[dict[str, Any]]) -> None:
    """The validation is not vacuous: a port given as a word, a misspelt field."""
    flow = copy.deepcopy(one(app, "Deployment", "flow"))
    assert schema_problems(flow, "1.30") is None
    container = flow["spec"]["template"]["spec"]["containers"][0]

    container["ports"][0]["containerPort"] = "eight"
    problem = schema_problems(flow, "1.30")
    assert problem and "containerPort" in problem and "'eight' is not of type 'integer'" in problem

    container["ports"][0]["containerPort"] = PORTS["flow"]
    container["livenesProbe"] = container.pop("livenessProbe")
    problem = schema_problems(flow, "1.30")
    assert problem and "'livenesProbe' was unexpected" in problem


def test_a_probe_on_a_port_that_is_not_the_services_is_caught(
        app: list[dict[str, Any]]) -> None:
    """A probe's port may be a name, so the schema takes "eight"; the probe check does not."""
    flow = copy.deepcopy(one(app, "Deployment", "flow"))
    assert probe_problems(flow, PORTS["flow"]) == []
    flow["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = \
        "eight"
    assert schema_problems(flow, "1.30") is None
    assert probe_problems(flow, PORTS["flow"]) == ["livenessProbe asks port 'eight', not 8002"]


# ------------------------------------------------------------------ the four services


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_runs_several_instances_of_the_one_image(
        app: list[dict[str, Any]], service: str) -> None:
    deployment = one(app, "Deployment", service)
    container = container_of(deployment)
    assert deployment["spec"]["replicas"] >= 2
    assert container["image"].rpartition(":")[0].endswith("/clinicflow")
    assert "command" not in container  # the image's ENTRYPOINT, clinicflow
    assert container["args"] == ["run", service]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_is_probed_on_its_own_port(
        app: list[dict[str, Any]], service: str) -> None:
    deployment = one(app, "Deployment", service)
    port = PORTS[service]
    assert probe_problems(deployment, port) == []
    container = container_of(deployment)
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert {"name": f"CLINICFLOW_{service.upper()}_PORT", "value": str(port)} in container["env"]
    startup = container["startupProbe"]["httpGet"]
    assert (startup["path"], startup["port"]) == ("/healthz", port)


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_runs_as_the_images_non_root_user_on_a_read_only_root(
        app: list[dict[str, Any]], service: str) -> None:
    pod = one(app, "Deployment", service)["spec"]["template"]["spec"]
    container = container_of(one(app, "Deployment", service))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_asks_for_memory_and_cpu_and_is_capped(
        app: list[dict[str, Any]], service: str) -> None:
    resources = container_of(one(app, "Deployment", service))["resources"]
    for what in ("cpu", "memory"):
        request, limit = resources["requests"][what], resources["limits"][what]
        assert 0 < quantity(request) <= quantity(limit), (what, request, limit)
    # the measured resident memory (deploy/kubernetes/base/<service>.yaml) fits the request
    assert quantity(resources["requests"]["memory"]) >= 128 * 2**20
    if service == "flow":  # 190-230 MiB at 250 clinics (bench/results/latest.json)
        assert quantity(resources["requests"]["memory"]) >= 230 * 2**20


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_has_a_disruption_budget_a_service_and_is_scraped(
        app: list[dict[str, Any]], service: str) -> None:
    deployment = one(app, "Deployment", service)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = one(app, "PodDisruptionBudget", service)
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable")
    port = PORTS[service]
    endpoint = one(app, "Service", service)["spec"]
    assert endpoint["selector"].items() <= pod_labels.items()
    assert [(p["port"], p["targetPort"]) for p in endpoint["ports"]] == [(port, "http")]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}
    monitors = load(DEPLOY / "monitoring" / "servicemonitors.yaml")
    monitor = one(monitors, "ServiceMonitor", service)["spec"]
    service_labels = one(app, "Service", service)["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["endpoints"][0]["port"] == "http"
    assert monitor["endpoints"][0]["path"] == "/metrics"
    # the Prometheus rules know the services by job name (deploy/prometheus)
    assert service_labels[monitor["jobLabel"]] == pod_labels[monitor["jobLabel"]] == service


# ------------------------------------------------------------------ settings and secrets


def environment_of(app: list[dict[str, Any]], service: str, ca_file: Path) -> dict[str, str]:
    """The environment a service's pod gets, with a stand-in for each Secret's value."""
    container = container_of(one(app, "Deployment", service))
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(app, "ConfigMap", source["configMapRef"]["name"])["data"])
    stand_ins = {
        "CLINICFLOW_CREDENTIALS":
            f'[{{"name": "desk", "role": "front_desk", "token_sha256": "{hash_token("t" * 32)}"}}]',
    }
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        elif not item["valueFrom"]["secretKeyRef"].get("optional"):
            env[item["name"]] = stand_ins.get(item["name"], "s3cret-" + "x" * 24)
    env["CLINICFLOW_KAFKA_SSL_CAFILE"] = str(ca_file)  # the mounted CA, here a file of ours
    return env


@pytest.fixture
def no_clinicflow_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in os.environ:
        if name.startswith("CLINICFLOW_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_gets_every_setting_production_asks_for(
        app: list[dict[str, Any]], service: str, tmp_path: Path,
        no_clinicflow_environment: pytest.MonkeyPatch) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    env = environment_of(app, service, ca_file)
    assert env["CLINICFLOW_ENV"] == "production"
    assert env["CLINICFLOW_HOST"] == "0.0.0.0"
    for name, value in env.items():
        no_clinicflow_environment.setenv(name, value)
    settings = SETTINGS[service]()  # raises InsecureConfiguration if anything is missing
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_username == f"clinicflow-{service}"
    assert settings.redis_url.startswith("redis://:s3cret-")
    assert settings.clinic_directory().zone("north").key == "America/New_York"


def test_a_deployment_missing_a_secret_would_not_start(
        app: list[dict[str, Any]], tmp_path: Path,
        no_clinicflow_environment: pytest.MonkeyPatch) -> None:
    """The check above is not vacuous: without the kiosk's identity secret checkin refuses."""
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    env = environment_of(app, "checkin", ca_file)
    del env["CLINICFLOW_CHECKIN_IDENTITY_SECRET"]
    for name, value in env.items():
        no_clinicflow_environment.setenv(name, value)
    with pytest.raises(InsecureConfiguration, match="CLINICFLOW_CHECKIN_IDENTITY_SECRET"):
        CheckinSettings()


def test_every_secret_a_pod_reads_is_documented_or_made_by_strimzi(
        app: list[dict[str, Any]], kafka: list[dict[str, Any]]) -> None:
    cluster = one(kafka, "Kafka", "clinicflow")["metadata"]["name"]
    users = {d["metadata"]["name"] for d in kafka if d["kind"] == "KafkaUser"}
    documented = {d["metadata"]["name"]: set(d["stringData"])
                  for d in load(DEPLOY / "secrets.example.yaml")}
    assert not users & set(documented), "a Secret of ours would clash with a KafkaUser's"
    for spec in pod_specs(app):
        for container in spec["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                if ref["name"] in users:
                    assert ref["key"] == "password", item
                else:
                    assert ref["key"] in documented.get(ref["name"], set()), item
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == f"{cluster}-cluster-ca-cert"


# ------------------------------------------------------------------ Kafka through Strimzi


def test_strimzi_resources_are_v1beta2_of_one_cluster(kafka: list[dict[str, Any]]) -> None:
    assert {d["apiVersion"] for d in kafka} == {STRIMZI_API}
    assert {d["kind"] for d in kafka} == CUSTOM_KINDS[STRIMZI_API]
    for doc in kafka:
        if doc["kind"] != "Kafka":
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "clinicflow", doc


def test_kafka_has_three_kraft_nodes_and_keeps_writing_with_one_down(
        kafka: list[dict[str, Any]]) -> None:
    spec = one(kafka, "Kafka", "clinicflow")["spec"]
    assert "zookeeper" not in spec
    assert "replicas" not in spec["kafka"] and "storage" not in spec["kafka"]  # node pools
    pools = [d["spec"] for d in kafka if d["kind"] == "KafkaNodePool"]
    assert sum(p["replicas"] for p in pools if "broker" in p["roles"]) == 3
    assert sum(p["replicas"] for p in pools if "controller" in p["roles"]) == 3
    config = spec["kafka"]["config"]
    assert config["min.insync.replicas"] == 2
    assert config["default.replication.factor"] == 3
    assert config["offsets.topic.replication.factor"] == 3
    assert config["auto.create.topics.enable"] is False
    assert spec["entityOperator"] == {"topicOperator": {}, "userOperator": {}}


def test_the_services_reach_kafka_over_tls_with_a_scram_login(
        app: list[dict[str, Any]], kafka: list[dict[str, Any]]) -> None:
    spec = one(kafka, "Kafka", "clinicflow")["spec"]["kafka"]
    config = one(app, "ConfigMap", "clinicflow-config")["data"]
    host, _, port = config["CLINICFLOW_KAFKA_BOOTSTRAP"].rpartition(":")
    assert host == "clinicflow-kafka-bootstrap"  # Strimzi's bootstrap Service
    listener = next(x for x in spec["listeners"] if x["port"] == int(port))
    assert listener["tls"] is True
    assert listener["authentication"] == {"type": "scram-sha-512"}
    assert config["CLINICFLOW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["CLINICFLOW_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert spec["authorization"] == {"type": "simple"}


def test_the_topics_are_those_of_shared_topics(kafka: list[dict[str, Any]]) -> None:
    topics = {d["spec"].get("topicName", d["metadata"]["name"]): d["spec"]
              for d in kafka if d["kind"] == "KafkaTopic"}
    assert {name: (spec["partitions"], spec["config"]["retention.ms"])
            for name, spec in topics.items()} == {
        t.name: (t.partitions, t.retention_ms) for t in ALL_TOPICS}
    for declared in ALL_TOPICS:
        spec = topics[declared.name]
        assert {k: str(v) for k, v in spec["config"].items()}.items() >= \
            declared.topic_config().items()
        assert spec["replicas"] == 3
        assert spec["config"]["min.insync.replicas"] == 2


def test_the_topics_job_makes_what_is_missing_three_times_replicated(
        app: list[dict[str, Any]], kafka: list[dict[str, Any]]) -> None:
    job = one(app, "Job", "clinicflow-topics")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["topics", "create", "--replication-factor", "3"]
    user = next(i["value"] for i in container["env"]
                if i["name"] == "CLINICFLOW_KAFKA_SASL_USERNAME")
    acls = one(kafka, "KafkaUser", user)["spec"]["authorization"]["acls"]
    assert acls == [{"resource": {"type": "topic", "name": "clinicflow.",
                                  "patternType": "prefix"},
                     "operations": ["Create", "Describe"]}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _acls(kafka: list[dict[str, Any]], user: str) -> dict[tuple[str, str], set[str]]:
    return {(a["resource"]["type"], a["resource"]["name"]): set(a["operations"])
            for a in one(kafka, "KafkaUser", user)["spec"]["authorization"]["acls"]}


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_has_its_own_kafka_login_for_its_topics_and_groups(
        app: list[dict[str, Any]], kafka: list[dict[str, Any]], service: str) -> None:
    user = f"clinicflow-{service}"
    assert one(kafka, "KafkaUser", user)["spec"]["authentication"] == {"type": "scram-sha-512"}
    acls = _acls(kafka, user)
    declared = {t.name for t in ALL_TOPICS}
    assert {name for kind, name in acls if kind == "topic"} <= declared
    assert {"Write", "Describe"} <= acls[("topic", DEAD_LETTER.name)]
    group = _default(SETTINGS[service], f"{service}_group_id")
    groups = ({group, f"{group}-ledger"} if service == "billing"
              else {group, f"{group}-accuracy", f"{group}-directory",
                    f"{group}-satisfaction"}
              if service == "notifications"
              else {group, f"{group}-directory"} if service == "flow" else {group})
    assert {name for kind, name in acls if kind == "group"} == groups
    for name in groups:
        assert acls[("group", name)] == {"Read"}
    env = container_of(one(app, "Deployment", service))["env"]
    assert {"name": "CLINICFLOW_KAFKA_SASL_USERNAME", "value": user} in env


def test_what_each_service_reads_and_writes_matches_the_event_flow(
        kafka: list[dict[str, Any]]) -> None:
    """The picture in README.md: who publishes and who consumes which topic."""
    def topics(service: str, operation: str) -> set[str]:
        return {name.split(".")[1] for (kind, name), ops in
                _acls(kafka, f"clinicflow-{service}").items()
                if kind == "topic" and operation in ops}

    assert topics("checkin", "Read") == {"floor", "estimates"}
    assert topics("checkin", "Write") == {"floor", "told", "directory", "deadletter"}
    assert topics("flow", "Read") == {"floor", "directory"}
    assert topics("flow", "Write") == {"floor", "estimates", "told", "deadletter"}
    assert topics("notifications", "Read") == {"floor", "estimates", "told", "directory",
                                               "notifications"}
    assert topics("notifications", "Write") == {"notifications", "told", "audit", "deadletter"}
    assert topics("billing", "Read") == {"floor", "ledger"}
    assert topics("billing", "Write") == {"floor", "ledger", "deadletter"}


# ------------------------------------------------------------------ Redis


def test_redis_wants_a_password_and_keeps_its_data(app: list[dict[str, Any]]) -> None:
    redis = one(app, "StatefulSet", "redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    password = next(i for i in container["env"] if i["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "clinicflow-redis",
                                                     "key": "password"}
    config = one(app, "ConfigMap", "redis-config")["data"]["redis.conf"]
    assert "appendonly yes" in config and "maxmemory-policy noeviction" in config
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    for service in SETTINGS:
        env = container_of(one(app, "Deployment", service))["env"]
        url = next(i["value"] for i in env if i["name"] == "CLINICFLOW_REDIS_URL")
        assert url == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
