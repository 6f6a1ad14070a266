"""The Helm chart, rendered offline with helm-python-sdk (no helm binary, no cluster).

Profiles: the chart defaults, examples/values-gpu-production.yaml, examples/values-keda.yaml on its
own, and both layered (as the KEDA profile's header shows). Each is linted, every rendered object is
validated against the Kubernetes schemas, and the fields that matter for a GPU Kafka worker are
asserted. The KLEIN_EDIT_* variables the chart sets are checked against the worker's `Settings`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from consumer.settings import Settings
from tests.helm.config_schema import SCHEMA_PATH, config_schema, secret_fields

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "klein-edit"
EXAMPLES = CHART_DIR / "examples"
RELEASE = "klein-edit"
NAMESPACE = "ml"
K8S_VERSION = "1.33"
# Custom resources: kubernetes-validate ships only the built-in Kubernetes schemas, so these kinds are
# checked by the explicit assertions below (and a minimal structural check) instead.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
}
SECRET_ENV = {
    "KLEIN_EDIT_KAFKA__SASL_USERNAME",
    "KLEIN_EDIT_KAFKA__SASL_PASSWORD",
    "KLEIN_EDIT_S3__ACCESS_KEY_ID",
    "KLEIN_EDIT_S3__SECRET_ACCESS_KEY",
    "KLEIN_EDIT_PIPELINE__HF_TOKEN",
    "HF_TOKEN",
}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of several -f files: maps merge recursively, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu-production": _load("values-gpu-production.yaml"),
    "keda": _load("values-keda.yaml"),
    "gpu-production+keda": _merge(_load("values-gpu-production.yaml"), _load("values-keda.yaml")),
}
KEDA_PROFILES = [name for name, values in PROFILES.items() if values.get("keda", {}).get("enabled")]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


class Rendered:
    """The objects of one render, by kind."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = [
            doc
            for path, text in sorted(manifests.items())
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def workload(self) -> dict[str, Any]:
        """The Deployment, or the StatefulSet with workload.kind StatefulSet."""
        (found,) = self.of_kind("Deployment") + self.of_kind("StatefulSet")
        return found

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.workload["spec"]["template"]["spec"]
        return spec

    def container(self, name: str = "worker") -> dict[str, Any]:
        return next(
            c for c in self.pod["containers"] + self.pod.get("initContainers", []) if c["name"] == name
        )

    def env(self, container: str = "worker") -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container(container).get("env", [])}

    def env_values(self, container: str = "worker") -> dict[str, str]:
        return {name: e["value"] for name, e in self.env(container).items() if "value" in e}


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


@pytest.fixture(scope="module", params=list(PROFILES))
def profile(request: pytest.FixtureRequest, chart: helm.Chart) -> tuple[str, Rendered]:
    name: str = request.param
    return name, render(chart, PROFILES[name])


def setting_env_names(model: type[BaseModel] = Settings, prefix: str = "KLEIN_EDIT_") -> set[str]:
    """Every environment variable name the worker's Settings reads (nested with '__')."""
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= setting_env_names(annotation, f"{name}__")
        else:
            names.add(name)
    return names


# ---------------------------------------------------------------------------------------------------
# Lint and schema validation


@pytest.mark.parametrize("name", list(PROFILES))
def test_lint_passes(name: str) -> None:
    report = helm.lint(CHART_DIR, PROFILES[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_rendered_objects_validate_against_kubernetes_schemas(profile: tuple[str, Rendered]) -> None:
    _, rendered = profile
    validated = set()
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            # No schema for custom resources in kubernetes-validate: check the envelope only.
            assert obj["metadata"]["name"]
            assert obj["metadata"]["namespace"] == NAMESPACE
            assert isinstance(obj["spec"], dict)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        validated.add(obj["kind"])
    assert {"Deployment", "ServiceAccount", "Service"} <= validated


def _structure(node: Any) -> Any:
    """A schema without its descriptions: wording changes in Settings need no chart change."""
    if isinstance(node, dict):
        return {k: _structure(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_structure(v) for v in node]
    return node


def test_config_schema_matches_the_settings_model() -> None:
    """values.schema.json's `config` lists every (non-secret) setting, with the model's types."""
    checked_in = _structure(json.loads(SCHEMA_PATH.read_text())["properties"]["config"])
    expected = _structure(config_schema())
    drift = {
        section: {
            "missing from the chart": sorted(fields.keys() - have),
            "not settings": sorted(have - fields.keys()),
            "changed": sorted(k for k in fields.keys() & have if fields[k] != checked_in_fields[k]),
        }
        for section, spec in expected["properties"].items()
        for fields in [spec["properties"]]
        for checked_in_fields in [checked_in["properties"].get(section, {}).get("properties", {})]
        for have in [set(checked_in_fields)]
    }
    drift = {section: d for section, d in drift.items() if any(d.values())}
    assert checked_in == expected, (
        f"helm/klein-edit/values.schema.json is out of date with consumer.settings.Settings ({drift}): "
        "run `python -m tests.helm.config_schema --write`"
    )


def test_schema_rejects_misspelt_and_secret_config(chart: helm.Chart) -> None:
    assert "bootstrapServers" in render_error(chart, {"config": {"kafka": {"bootstrapServers": "k:9092"}}})
    for section, field in secret_fields():
        assert field in render_error(chart, {"config": {section: {field: "hunter2"}}})


# ---------------------------------------------------------------------------------------------------
# Environment: every KLEIN_EDIT_* is a real setting, and the values parse


def test_every_klein_edit_env_is_a_setting(profile: tuple[str, Rendered]) -> None:
    _, rendered = profile
    known = setting_env_names()
    containers = [c["name"] for c in rendered.pod["containers"] + rendered.pod.get("initContainers", [])]
    for container in containers:
        rendered_names = {n for n in rendered.env(container) if n.startswith("KLEIN_EDIT_")}
        assert rendered_names, container
        assert rendered_names - known == set(), f"{container}: not settings of the worker"


def test_rendered_env_parses_into_settings(profile: tuple[str, Rendered], tmp_path: Path) -> None:
    """The worker's own pydantic-settings parsing accepts every plain value the chart renders."""
    _, rendered = profile
    env = {k: v for k, v in rendered.env_values().items() if k.startswith("KLEIN_EDIT_")}
    dotenv = tmp_path / "worker.env"
    assert not any("'" in v for v in env.values())
    dotenv.write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))

    class FromRenderedEnv(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (dotenv_settings,)  # only the rendered env, never this process's environment

    if "KLEIN_EDIT_S3__OUTPUT_BUCKET" not in env:
        # The default values name no buckets: on AWS the worker refuses to start rather than guess.
        with pytest.raises(ValidationError, match="input_bucket"):
            FromRenderedEnv(_env_file=dotenv)  # type: ignore[call-arg]
        return
    settings = FromRenderedEnv(_env_file=dotenv)  # type: ignore[call-arg]
    assert settings.kafka.group_id == env["KLEIN_EDIT_KAFKA__GROUP_ID"]
    assert settings.worker.drain_grace_s == float(env["KLEIN_EDIT_WORKER__DRAIN_GRACE_S"])
    assert settings.pipeline.cache_dir == "/models/hub"
    assert settings.log.format == "json"


def test_config_values_render_as_the_settings_expect(chart: helm.Chart) -> None:
    rendered = render(
        chart,
        {
            "config": {
                "s3": {"allowed_buckets": ["a", "b"], "endpoint_url": None},
                "kafka": {"low_lane_share": 0.25, "max_request_bytes": 10485760},
                "pipeline": {"warmup_sizes": [[1024, 1024]], "warmup": False},
            }
        },
    )
    env = rendered.env_values()
    assert env["KLEIN_EDIT_S3__ALLOWED_BUCKETS"] == '["a","b"]'
    assert "KLEIN_EDIT_S3__ENDPOINT_URL" not in env  # null: the worker's default applies
    assert env["KLEIN_EDIT_KAFKA__LOW_LANE_SHARE"] == "0.25"
    assert env["KLEIN_EDIT_KAFKA__MAX_REQUEST_BYTES"] == "10485760"  # not 1.048576e+07
    assert env["KLEIN_EDIT_PIPELINE__WARMUP_SIZES"] == "[[1024,1024]]"
    assert env["KLEIN_EDIT_PIPELINE__WARMUP"] == "false"


def test_extra_env_cannot_override_rendered_settings_or_carry_plain_secrets(chart: helm.Chart) -> None:
    error = render_error(chart, {"extraEnv": [{"name": "KLEIN_EDIT_KAFKA__GROUP_ID", "value": "other"}]})
    assert "KLEIN_EDIT_KAFKA__GROUP_ID" in error
    error = render_error(chart, {"extraEnv": [{"name": "HF_TOKEN", "value": "hf_123"}]})
    assert "plain value" in error
    rendered = render(
        chart, {"extraEnv": [{"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"}]}
    )
    assert rendered.env_values()["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_cache_dir_must_be_on_the_model_volume(chart: helm.Chart) -> None:
    assert "model volume" in render_error(chart, {"config": {"pipeline": {"cache_dir": "/home/app/hub"}}})
    rendered = render(chart, {"config": {"pipeline": {"cache_dir": "/models/custom"}}})
    assert rendered.env_values()["KLEIN_EDIT_PIPELINE__CACHE_DIR"] == "/models/custom"


# ---------------------------------------------------------------------------------------------------
# GPU scheduling, probes, shutdown, security


def test_gpu_limit_and_scheduling(profile: tuple[str, Rendered]) -> None:
    name, rendered = profile
    limits = rendered.container("worker")["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    if "fetch-model" in {c["name"] for c in rendered.pod.get("initContainers", [])}:
        assert "nvidia.com/gpu" not in rendered.container("fetch-model")["resources"].get("limits", {})
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in rendered.pod[
        "tolerations"
    ]
    if name.startswith("gpu-production"):
        terms = rendered.pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        expr = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert expr == {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"],
        }


def test_gpu_count_zero_runs_without_a_gpu_limit(chart: helm.Chart) -> None:
    rendered = render(chart, {"gpu": {"count": 0}, "config": {"pipeline": {"model": "tiny-random"}}})
    assert "nvidia.com/gpu" not in rendered.container("worker")["resources"]["limits"]
    error = render_error(chart, {"resources": {"limits": {"nvidia.com/gpu": 2}}})
    assert "gpu.count" in error


def test_gpu_products_are_anded_into_existing_node_affinity(chart: helm.Chart) -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    spot = {"key": "node.kubernetes.io/lifecycle", "operator": "In", "values": ["spot"]}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone]}, {"matchExpressions": [spot]}]
            }
        }
    }
    rendered = render(chart, {"gpu": {"products": ["NVIDIA-H200"]}, "affinity": affinity})
    req = rendered.pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    gpu = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H200"]}
    assert req["nodeSelectorTerms"] == [{"matchExpressions": [zone, gpu]}, {"matchExpressions": [spot, gpu]}]


def test_probes(profile: tuple[str, Rendered]) -> None:
    name, rendered = profile
    worker = rendered.container("worker")
    port = worker["ports"][0]
    assert port["name"] == "http"
    assert port["containerPort"] == int(rendered.env_values()["KLEIN_EDIT_WORKER__HTTP_PORT"])
    paths = {kind: worker[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths["startupProbe"] == {"path": "/startupz", "port": "http"}
    assert paths["livenessProbe"] == {"path": "/livez", "port": "http"}
    assert paths["readinessProbe"] == {"path": "/readyz", "port": "http"}
    startup = worker["startupProbe"]
    window = startup["periodSeconds"] * startup["failureThreshold"]
    compile_on = rendered.env_values()["KLEIN_EDIT_PIPELINE__COMPILE"] == "true"
    assert window >= (30 * 60 if compile_on else 20 * 60), name
    # The rollout is not declared failed while a pod may still legitimately be starting.
    assert rendered.one("Deployment")["spec"]["progressDeadlineSeconds"] > window


def test_termination_grace_exceeds_drain(profile: tuple[str, Rendered]) -> None:
    _, rendered = profile
    drain = float(rendered.env_values()["KLEIN_EDIT_WORKER__DRAIN_GRACE_S"])
    grace = rendered.pod["terminationGracePeriodSeconds"]
    assert grace >= drain + 10
    assert drain >= 60  # a 50-step bf16 edit takes ~34 s, plus upload


def test_termination_grace_follows_drain_and_refuses_inconsistency(chart: helm.Chart) -> None:
    rendered = render(
        chart, {"config": {"worker": {"drain_grace_s": 300.5}}, "shutdown": {"marginSeconds": 20}}
    )
    assert rendered.env_values()["KLEIN_EDIT_WORKER__DRAIN_GRACE_S"] == "300.5"
    assert rendered.pod["terminationGracePeriodSeconds"] == 321
    error = render_error(
        chart,
        {"config": {"worker": {"drain_grace_s": 120}}, "shutdown": {"terminationGracePeriodSeconds": 100}},
    )
    assert "terminationGracePeriodSeconds" in error
    error = render_error(chart, {"extraEnv": [{"name": "KLEIN_EDIT_WORKER__DRAIN_GRACE_S", "value": "600"}]})
    assert "KLEIN_EDIT_WORKER__DRAIN_GRACE_S" in error
    # null deletes the key in Helm; the worker would fall back to its own 300 s: refused.
    assert "drain_grace_s is required" in render_error(chart, {"config": {"worker": {"drain_grace_s": None}}})


def test_hardened_security_context(profile: tuple[str, Rendered]) -> None:
    _, rendered = profile
    pod_sc = rendered.pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 10001
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert rendered.pod["automountServiceAccountToken"] is False
    for container in rendered.pod["containers"] + rendered.pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsUser"] == 10001
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/tmp"] == "tmp"
        assert mounts["/models"] == "models"
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    env = rendered.env_values()
    assert env["HOME"] == "/tmp"
    assert env["HF_HOME"] == "/models"


def test_model_cache_volume(profile: tuple[str, Rendered]) -> None:
    name, rendered = profile
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    claim = rendered.one("PersistentVolumeClaim")
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert rendered.env_values()["HF_HUB_OFFLINE"] == "1"
    fetch = rendered.container("fetch-model")
    assert fetch["args"] == ["fetch-model"]
    assert "HF_HUB_OFFLINE" not in rendered.env("fetch-model")
    if name != "default":
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_model_cache_existing_claim_and_empty_dir(chart: helm.Chart) -> None:
    rendered = render(chart, {"modelCache": {"pvc": {"existingClaim": "flux-weights"}}})
    assert rendered.of_kind("PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "flux-weights"
    rendered = render(chart, {"modelCache": {"type": "emptyDir"}, "modelFetch": {"enabled": False}})
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert volumes["models"]["emptyDir"] == {"sizeLimit": "80Gi"}
    assert "initContainers" not in rendered.pod


# ---------------------------------------------------------------------------------------------------
# Secrets


def test_secrets_come_only_from_the_existing_secret(chart: helm.Chart) -> None:
    values = _merge(
        PROFILES["gpu-production"],
        {
            "secrets": {
                "keys": {"s3AccessKeyId": "aws-access-key-id", "s3SecretAccessKey": "aws-secret-access-key"}
            }
        },
    )
    rendered = render(chart, values)
    worker, fetch = rendered.env("worker"), rendered.env("fetch-model")
    assert SECRET_ENV - {"HF_TOKEN", "KLEIN_EDIT_PIPELINE__HF_TOKEN"} <= set(worker)
    assert {"HF_TOKEN", "KLEIN_EDIT_PIPELINE__HF_TOKEN"} <= set(fetch)
    # The worker loads from the cache: the Hugging Face token only goes to the init container.
    assert not {"HF_TOKEN", "KLEIN_EDIT_PIPELINE__HF_TOKEN"} & set(worker)
    for env in (worker, fetch):
        for name in SECRET_ENV & set(env):
            assert "value" not in env[name], name
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "klein-edit-credentials"
    assert not rendered.of_kind("Secret")


def test_no_secret_env_without_existing_secret(chart: helm.Chart) -> None:
    rendered = render(chart, {})
    for container in ("worker", "fetch-model"):
        assert not SECRET_ENV & set(rendered.env(container))
    assert "no HF_TOKEN" in rendered.notes


# ---------------------------------------------------------------------------------------------------
# KEDA


@pytest.mark.parametrize("name", KEDA_PROFILES)
def test_keda_scales_on_the_workers_own_consumer_group(chart: helm.Chart, name: str) -> None:
    rendered = render(chart, PROFILES[name])
    env = rendered.env_values()
    scaled = rendered.one("ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == rendered.one("Deployment")["metadata"]["name"]
    assert "replicas" not in rendered.one("Deployment")["spec"]  # the HPA owns the replica count
    # Two lanes, one trigger on the group with no topic: KEDA sums the lag over all of the group's
    # topics (a trigger per topic would make the HPA take the maximum instead).
    assert len(json.loads(env["KLEIN_EDIT_KAFKA__PRIORITY_TOPICS"])) == 1
    assert len(spec["triggers"]) == 1
    assert "topic" not in spec["triggers"][0]["metadata"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == env["KLEIN_EDIT_KAFKA__GROUP_ID"]
        assert meta["bootstrapServers"] == env["KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS"]
        assert meta["lagThreshold"] == str(PROFILES[name]["keda"]["lagThreshold"])
        assert all(isinstance(v, str) for v in meta.values())
        assert meta["sasl"] == "scram_sha512"
        assert meta["tls"] == "enable"
        assert (
            trigger["authenticationRef"]["name"] == rendered.one("TriggerAuthentication")["metadata"]["name"]
        )
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"] <= PROFILES[name]["keda"]["partitionCount"]
    auth = rendered.one("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {a["parameter"] for a in auth} == {"username", "password"}


def test_keda_sums_the_lag_of_every_lane(chart: helm.Chart) -> None:
    """Two lanes on plaintext Kafka: still one trigger, on the group, with no topic."""
    values = {
        "config": {"kafka": {"priority_topics": ["edit.requests.urgent"], "group_id": "workers"}},
        "keda": {"enabled": True, "partitionCount": 4, "maxReplicaCount": 4},
    }
    (trigger,) = render(chart, values).one("ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "workers"
    assert "topic" not in trigger["metadata"]
    assert "sasl" not in trigger["metadata"]
    assert "authenticationRef" not in trigger


def test_keda_refuses_more_replicas_than_partitions(chart: helm.Chart) -> None:
    values = _merge(PROFILES["keda"], {"keda": {"partitionCount": 12, "maxReplicaCount": 13}})
    error = render_error(chart, values)
    assert "maxReplicaCount (13) exceeds keda.partitionCount (12)" in error
    values = _merge(PROFILES["keda"], {"keda": {"partitionCount": 0}})
    assert "partitionCount is required" in render_error(chart, values)


def test_keda_with_sasl_needs_authentication(chart: helm.Chart) -> None:
    values = _merge(PROFILES["keda"], {"keda": {"authentication": {"enabled": False}}})
    assert "keda.authentication.enabled" in render_error(chart, values)


# ---------------------------------------------------------------------------------------------------
# Topics


def test_strimzi_topics_for_every_topic_the_workers_use(chart: helm.Chart) -> None:
    values = {
        "config": {"kafka": {"priority_topics": ["edit.urgent"], "control_topic": "edit.control"}},
        "topics": {
            "strimzi": {"enabled": True, "cluster": "prod"},
            "requestPartitions": 8,
            "config": {"requests": {"retention.ms": 1209600000}},
        },
    }
    rendered = render(chart, values)
    topics = {t["spec"]["topicName"]: t for t in rendered.of_kind("KafkaTopic")}
    assert set(topics) == {
        "edit.urgent",
        "edit.requests",
        "edit.results",
        "edit.requests.dlq",
        "edit.progress",
        "edit.control",
    }
    for topic in topics.values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert topic["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert topic["spec"]["replicas"] == 3
        assert all(isinstance(v, str) for v in topic["spec"]["config"].values())
    assert topics["edit.urgent"]["spec"]["partitions"] == topics["edit.requests"]["spec"]["partitions"] == 8
    assert topics["edit.requests"]["spec"]["config"]["retention.ms"] == "1209600000"  # override wins
    assert topics["edit.requests"]["spec"]["config"]["min.insync.replicas"] == "2"
    assert topics["edit.control"]["spec"]["config"]["cleanup.policy"] == "compact,delete"
    for name in ("edit.requests", "edit.results", "edit.requests.dlq", "edit.progress"):
        assert topics[name]["spec"]["config"]["cleanup.policy"] == "delete"
    # The worker never creates them itself.
    assert rendered.env_values().get("KLEIN_EDIT_KAFKA__CREATE_TOPICS", "false") == "false"


def test_strimzi_topics_are_off_by_default_and_need_a_cluster(chart: helm.Chart) -> None:
    assert render(chart, {}).of_kind("KafkaTopic") == []
    assert "topics.strimzi.cluster" in render_error(chart, {"topics": {"strimzi": {"enabled": True}}})
    values = _merge(
        PROFILES["keda"], {"topics": {"strimzi": {"enabled": True, "cluster": "c"}, "requestPartitions": 6}}
    )
    assert "keda.partitionCount (12) must equal topics.requestPartitions (6)" in render_error(chart, values)


def test_optional_objects_are_off_by_default(profile: tuple[str, Rendered]) -> None:
    name, rendered = profile
    kinds = {obj["kind"] for obj in rendered.objects}
    if name == "default":
        assert kinds == {"Deployment", "ServiceAccount", "Service", "PersistentVolumeClaim"}
    if name.startswith("gpu-production"):
        monitor = rendered.one("ServiceMonitor")["spec"]["endpoints"][0]
        assert monitor["port"] == "http"
        assert monitor["path"] == "/metrics"
        pdb = rendered.one("PodDisruptionBudget")["spec"]
        assert pdb["maxUnavailable"] == 1
        assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert rendered.one("ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    service = rendered.one("Service")["spec"]
    assert service["publishNotReadyAddresses"] is True


# ---------------------------------------------------------------------------------------------------
# Platform authentication (SASL/OAUTHBEARER)

OIDC_VALUES: dict[str, Any] = {
    "config": {
        "kafka": {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "OAUTHBEARER",
            "oauth_provider": "oidc",
            "oauth_token_endpoint": "https://login.example/tenant/oauth2/v2.0/token",
            "oauth_client_id": "klein-edit-client",
            "oauth_scope": "https://ns.servicebus.windows.net/.default",
            "oauth_extensions": {"logicalCluster": "lkc-1", "identityPoolId": "pool-2"},
        }
    },
    "secrets": {"existingSecret": "kafka-oauth", "keys": {"kafkaOauthClientSecret": "client-secret"}},
}


def test_oidc_settings_render_and_the_client_secret_comes_from_the_secret(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(chart, OIDC_VALUES)
    env, values = rendered.env(), rendered.env_values()
    assert values["KLEIN_EDIT_KAFKA__SASL_MECHANISM"] == "OAUTHBEARER"
    assert values["KLEIN_EDIT_KAFKA__OAUTH_CLIENT_ID"] == "klein-edit-client"
    # A map-valued setting is one JSON variable: its keys are case-sensitive SASL extension names.
    assert json.loads(values["KLEIN_EDIT_KAFKA__OAUTH_EXTENSIONS"]) == {
        "logicalCluster": "lkc-1",
        "identityPoolId": "pool-2",
    }
    secret = env["KLEIN_EDIT_KAFKA__OAUTH_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "kafka-oauth", "key": "client-secret"}
    for name in [n for n in os.environ if n.startswith("KLEIN_EDIT_")]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        if name.startswith("KLEIN_EDIT_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__OAUTH_CLIENT_SECRET", "from-the-secret")
    # The default values name no buckets (required on AWS); these tests are about Kafka.
    monkeypatch.setenv("KLEIN_EDIT_S3__INPUT_BUCKET", "acme-inputs")
    monkeypatch.setenv("KLEIN_EDIT_S3__OUTPUT_BUCKET", "acme-outputs")
    settings = Settings()  # the worker's own parsing accepts them
    assert settings.kafka.oauth_extensions["logicalCluster"] == "lkc-1"


def test_oidc_without_a_client_secret_is_refused(chart: helm.Chart) -> None:
    values = copy.deepcopy(OIDC_VALUES)
    values["secrets"]["keys"]["kafkaOauthClientSecret"] = ""
    assert "kafkaOauthClientSecret" in render_error(chart, values)
    plain = _merge(OIDC_VALUES, {"config": {"kafka": {"oauth_client_secret": "hunter2"}}})
    assert "oauth_client_secret" in render_error(chart, plain)


def test_msk_iam_needs_no_secret_and_uses_the_pod_role(chart: helm.Chart) -> None:
    values = {
        "config": {
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "oauth_provider": "aws_msk_iam",
                "aws_msk_iam_region": "eu-west-1",
            }
        },
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/klein"}},
    }
    rendered = render(chart, values)
    assert rendered.env_values()["KLEIN_EDIT_KAFKA__AWS_MSK_IAM_REGION"] == "eu-west-1"
    assert not {n for n in rendered.env() if "SASL_PASSWORD" in n or "OAUTH_CLIENT_SECRET" in n}
    keda = _merge(PROFILES["keda"], values)
    assert "AWS MSK IAM" in render_error(chart, keda)


def test_keda_reads_the_lag_with_the_workers_oidc_client(chart: helm.Chart) -> None:
    values = _merge(_merge(PROFILES["keda"], OIDC_VALUES), {"secrets": {"existingSecret": "kafka-oauth"}})
    rendered = render(chart, values)
    for trigger in rendered.one("ScaledObject")["spec"]["triggers"]:
        assert trigger["metadata"]["sasl"] == "oauthbearer"
        assert trigger["metadata"]["tls"] == "enable"
    auth = rendered.one("TriggerAuthentication")["spec"]
    from_env = {a["parameter"]: a["name"] for a in auth["env"]}
    assert from_env == {
        "username": "KLEIN_EDIT_KAFKA__OAUTH_CLIENT_ID",
        "oauthTokenEndpointUri": "KLEIN_EDIT_KAFKA__OAUTH_TOKEN_ENDPOINT",
        "scopes": "KLEIN_EDIT_KAFKA__OAUTH_SCOPE",
    }
    assert all(a["containerName"] == "worker" for a in auth["env"])
    assert set(from_env.values()) <= set(rendered.env_values())  # KEDA finds them on the worker
    assert auth["secretTargetRef"] == [
        {"parameter": "password", "name": "kafka-oauth", "key": "client-secret"}
    ]


# ---------------------------------------------------------------------------------------------------
# Static membership


def test_static_membership_names_each_member_after_its_pod(chart: helm.Chart) -> None:
    assert "KLEIN_EDIT_KAFKA__GROUP_INSTANCE_ID" not in render(chart, {}).env()  # off by default
    rendered = render(chart, {"staticMembership": {"enabled": True}})
    instance = rendered.env()["KLEIN_EDIT_KAFKA__GROUP_INSTANCE_ID"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # One value for every replica would make the members fence each other out: never from config.
    error = render_error(chart, {"config": {"kafka": {"group_instance_id": "klein-edit"}}})
    assert "group_instance_id" in error


def test_a_chart_only_bump_leaves_the_pod_template_alone(profile: tuple[str, Rendered]) -> None:
    """helm.sh/chart changes with every chart release; on the pod template it would restart every GPU
    pod (and reload the model) for a change that does not touch the pods. It labels the objects only."""
    _, rendered = profile
    deployment = rendered.one("Deployment")
    assert "helm.sh/chart" in deployment["metadata"]["labels"]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in template_labels
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert template_labels["app.kubernetes.io/component"] == "worker"


def test_a_statefulset_keeps_pod_names_across_rollouts(chart: helm.Chart) -> None:
    """workload.kind StatefulSet: the same pod, probes and env, stable names, one pod at a time."""
    values = {"workload": {"kind": "StatefulSet"}, "staticMembership": {"enabled": True}}
    rendered = render(chart, values)
    assert not rendered.of_kind("Deployment")
    workload = rendered.one("StatefulSet")
    kubernetes_validate.validate(workload, K8S_VERSION, strict=True)
    spec = workload["spec"]
    assert spec["serviceName"] == rendered.one("Service")["metadata"]["name"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert "strategy" not in spec
    assert "progressDeadlineSeconds" not in spec
    assert (
        spec["template"]
        == render(chart, {"staticMembership": {"enabled": True}}).workload["spec"]["template"]
    )
    instance = rendered.env()["KLEIN_EDIT_KAFKA__GROUP_INSTANCE_ID"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    keda = render(chart, _merge(PROFILES["keda"], values))
    assert keda.one("ScaledObject")["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": keda.one("StatefulSet")["metadata"]["name"],
    }
    assert "/workload/kind" in render_error(chart, {"workload": {"kind": "DaemonSet"}})


def test_c2pa_signing_mounts_the_secret_and_points_the_worker_at_its_files(chart: helm.Chart) -> None:
    rendered = render(chart, {"signing": {"secretName": "c2pa-signer"}})
    values = rendered.env_values()
    assert values["KLEIN_EDIT_PROVENANCE__SIGNING_KEY_FILE"] == "/etc/klein-edit/c2pa/tls.key"
    assert values["KLEIN_EDIT_PROVENANCE__CERTIFICATE_CHAIN_FILE"] == "/etc/klein-edit/c2pa/tls.crt"
    (volume,) = [v for v in rendered.pod["volumes"] if v["name"] == "c2pa-signing"]
    assert volume["secret"]["secretName"] == "c2pa-signer"
    assert {item["key"] for item in volume["secret"]["items"]} == {"tls.key", "tls.crt"}
    (mount,) = [m for m in rendered.container()["volumeMounts"] if m["name"] == "c2pa-signing"]
    assert mount == {"name": "c2pa-signing", "mountPath": "/etc/klein-edit/c2pa", "readOnly": True}
    # Off by default: no volume, no variable.
    plain = render(chart, {})
    assert not [v for v in plain.pod["volumes"] if v["name"] == "c2pa-signing"]
    assert not [n for n in plain.env_values() if n.startswith("KLEIN_EDIT_PROVENANCE__")]


def test_c2pa_key_is_never_a_value(chart: helm.Chart) -> None:
    inline = {"config": {"provenance": {"signing_key": "-----BEGIN PRIVATE KEY-----"}}}
    assert "signing_key" in render_error(chart, inline)
    both = {"signing": {"secretName": "s"}, "config": {"provenance": {"signing_key_file": "/k.pem"}}}
    assert "set by the chart" in render_error(chart, both)
