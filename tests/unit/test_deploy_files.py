"""Deploy files: they parse, run the Procfile's commands, stay on loopback and use known names.

Checks `deploy/` statically: systemd units, the container image definition, the compose file,
the Kubernetes manifests, the Grafana dashboard and the Prometheus rules. Where `promtool` or
`systemd-analyze` is installed, their own checks run too. Nothing here builds or starts anything.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from system_tools import system_tool

from api.documents import HEALTH_FIELDS
from pipelines.settings import SPECS
from workers.metrics import DB_VARIABLE
from workers.metrics_server import HOST_VARIABLE, PORT_VARIABLE

try:
    import yaml  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - pyyaml is in the dev dependency group
    yaml = None

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "data-export.json"
RUNBOOK = ROOT / "docs" / "operations.md"

# The unit that runs each Procfile process.
SYSTEMD_UNITS = {
    "release": "data-export-migrate.service",
    "web": "data-export-web.service",
    "worker": "data-export-worker@.service",
    "verifier": "data-export-verifier.service",
    "scheduler": "data-export-scheduler.service",
}
# The compose service and Kubernetes workload that run each Procfile process.
COMPOSE_SERVICES = {name: name for name in SYSTEMD_UNITS} | {"release": "migrate"}
KUBERNETES_WORKLOADS = {
    "release": "data-export-migrate",
    "web": "data-export-web",
    "worker": "data-export-worker",
    "verifier": "data-export-verifier",
    "scheduler": "data-export-scheduler",
}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}
# Variables the processes read besides Settings: gunicorn's config file, Dramatiq's prefetch and
# metrics server, and Python's own.
PYTHON_VARIABLES = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
DRAMATIQ_VARIABLES = {"dramatiq_queue_prefetch", HOST_VARIABLE, PORT_VARIABLE, DB_VARIABLE}
# Gauges the dashboard and the alerts use that are read at scrape time (broker queue depth and
# oldest message age per queue, bytes of stored exports): the API's /metrics exposes them.
BACKLOG_GAUGES = {
    "data_export_queue_messages",
    "data_export_queue_oldest_message_age_seconds",
    "data_export_storage_used_bytes",
}
# systemd's exposure score runs from 0 (locked down) to 10; under 2 is what it calls "OK".
MAX_SYSTEMD_EXPOSURE = 2.0


def _yaml() -> Any:
    if yaml is None:
        pytest.fail("PyYAML is needed to check the deploy files: add pyyaml to the dev group")
    return yaml


def _load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in _yaml().safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _procfile() -> dict[str, tuple[dict[str, str], list[str]]]:
    """Return each Procfile process's environment assignments and argument list."""
    processes = {}
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, command = line.split(":", 1)
        words = shlex.split(command)
        env = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        processes[name.strip()] = (env, words)
    return processes


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(_join_repeated_keys((SYSTEMD / name).read_text(encoding="utf-8")))
    return parser


def _join_repeated_keys(text: str) -> str:
    """Number repeated keys (systemd allows them) so configparser keeps every one."""
    seen: dict[tuple[str, str], int] = {}
    section = ""
    lines = []
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            count = seen.get((section, key), 0)
            seen[(section, key)] = count + 1
            lines.append(f"{key}#{count}={value}" if count else line)
            continue
        lines.append(line)
    return "\n".join(lines)


def _unit_values(unit: configparser.RawConfigParser, section: str, key: str) -> list[str]:
    return [
        value for name, value in unit.items(section) if name == key or name.startswith(f"{key}#")
    ]


def _unit_environment(unit: configparser.RawConfigParser) -> dict[str, str]:
    env = {}
    for line in _unit_values(unit, "Service", "Environment"):
        for word in shlex.split(line):
            key, value = word.split("=", 1)
            env[key] = value
    return env


def _compose() -> dict[str, Any]:
    documents = _load_yaml_documents(DEPLOY / "compose.yaml")
    assert len(documents) == 1
    compose: dict[str, Any] = documents[0]
    return compose


def _kubernetes_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in _load_yaml_documents(path):
            yield path, document


def _workloads() -> dict[str, dict[str, Any]]:
    """Return each Deployment, Job and CronJob by name, with its pod spec under `pod`."""
    found = {}
    for _, obj in _kubernetes_objects():
        spec = obj.get("spec", {})
        if obj["kind"] in {"Deployment", "Job"}:
            found[obj["metadata"]["name"]] = {"object": obj, "pod": spec["template"]["spec"]}
        elif obj["kind"] == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
            found[obj["metadata"]["name"]] = {"object": obj, "pod": pod}
    return found


def _known_variables() -> set[str]:
    gunicorn = (DEPLOY / "gunicorn.conf.py").read_text(encoding="utf-8")
    read_by_gunicorn = set(re.findall(r"environ\.get\(\"([A-Z_]+)\"", gunicorn))
    assert read_by_gunicorn >= {"API_BIND", "API_WORKERS"}
    return _env_example_names() | read_by_gunicorn | DRAMATIQ_VARIABLES | PYTHON_VARIABLES


def _env_example_names() -> set[str]:
    text = (DEPLOY / "env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def _exposed_metric_series() -> set[str]:
    """Every series name the API, the workers and Dramatiq's middleware can expose."""
    names = {f"data_export_{column}" for column, _ in HEALTH_FIELDS}
    for source in [ROOT / "api" / "metrics.py", *sorted((ROOT / "workers").glob("**/*.py"))]:
        names |= set(re.findall(r"\"(data_export_[a-z0-9_]+)\"", source.read_text("utf-8")))
    # Read, not imported: importing it creates Dramatiq's metrics folder.
    spec = importlib.util.find_spec("dramatiq.middleware.prometheus")
    assert spec is not None
    assert spec.origin is not None
    dramatiq_source = Path(spec.origin).read_text(encoding="utf-8")
    names |= set(re.findall(r"\"(dramatiq_[a-z_]+)\"", dramatiq_source))
    suffixes = ("", "_total", "_bucket", "_count", "_sum", "_created")
    return {name + suffix for name in names for suffix in suffixes}


def _known_metric_series() -> set[str]:
    return _exposed_metric_series()


def _metric_names(expression: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expression)
    return set(re.findall(r"\b((?:data_export|dramatiq)_[a-z0-9_]+)\b", without_labels))


def _alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in _load_yaml_documents(ALERTS)[0]["groups"]:
        rules.extend(group["rules"])
    return rules


def _runbook_anchors() -> set[str]:
    anchors = set()
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    return anchors


def test_every_yaml_file_in_deploy_parses() -> None:
    paths = sorted([*DEPLOY.glob("**/*.yaml"), *DEPLOY.glob("**/*.yml")])
    assert len(paths) >= 10
    for path in paths:
        assert _load_yaml_documents(path), path


def test_every_json_file_in_deploy_parses() -> None:
    paths = sorted(DEPLOY.glob("**/*.json"))
    assert DASHBOARD in paths
    for path in paths:
        json.loads(path.read_text(encoding="utf-8"))


def test_compose_runs_a_service_per_procfile_process_with_its_command() -> None:
    services = _compose()["services"]
    for process, (env, command) in _procfile().items():
        service = services[COMPOSE_SERVICES[process]]
        assert service["command"] == command, process
        for key, value in env.items():
            assert str(service["environment"][key]) == value, (process, key)
    assert {"postgres", "redis", "s3", "scheduler"} <= set(services)


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = 0
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), (name, port)
            assert port.startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published >= 4


def test_compose_app_services_use_the_image_built_from_the_containerfile() -> None:
    services = _compose()["services"]
    for process in _procfile():
        service = services[COMPOSE_SERVICES[process]]
        assert service["build"]["dockerfile"] == "deploy/Containerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_containerfile_installs_the_lock_and_runs_as_a_non_root_user() -> None:
    text = (DEPLOY / "Containerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert bases
    assert bases[0].startswith("python:3.11-slim")
    assert "uv sync --frozen --no-default-groups" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in {"0", "root"}
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path


def test_systemd_units_carry_the_hardening_keys() -> None:
    for unit_name in SYSTEMD_UNITS.values():
        unit = _unit(unit_name)
        for key, expected in HARDENING.items():
            assert unit.get("Service", key) == expected, (unit_name, key)
        assert unit.get("Service", "User") not in {"", "root"}, unit_name
        assert unit.get("Service", "EnvironmentFile") == "/etc/data-export/env", unit_name
        if unit.get("Service", "Type") != "oneshot":
            assert unit.get("Service", "Restart") in {"always", "on-failure"}, unit_name


def test_systemd_units_run_the_procfile_commands() -> None:
    for process, (env, command) in _procfile().items():
        unit = _unit(SYSTEMD_UNITS[process])
        words = shlex.split(unit.get("Service", "ExecStart"))
        assert Path(words[0]).name == command[0], process
        assert words[1:] == command[1:], process
        unit_env = _unit_environment(unit)
        for key, value in env.items():
            assert unit_env[key] == value, (process, key)


def test_systemd_analyze_finds_nothing_wrong_but_the_missing_install() -> None:
    analyze = system_tool("systemd-analyze", package="systemd")
    units = [str(SYSTEMD / name) for name in SYSTEMD_UNITS.values() if "@" not in name]
    units.append(str(SYSTEMD / "data-export.target"))
    result = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # The commands live under /opt/data-export, which this machine does not have.
        if line.strip() and not re.search(r"Command /opt/data-export/\S+ is not executable", line)
    ]
    assert problems == []


def test_systemd_units_score_as_well_hardened(tmp_path: Path) -> None:
    analyze = system_tool("systemd-analyze", package="systemd")
    for unit_name in SYSTEMD_UNITS.values():
        # A template is scored as one of its instances, as systemd would load it.
        instance = unit_name.replace("@.service", "@9191.service")
        (tmp_path / instance).write_text((SYSTEMD / unit_name).read_text(encoding="utf-8"))
        result = subprocess.run(
            [analyze, "security", "--offline=yes", f"./{instance}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= MAX_SYSTEMD_EXPOSURE, (unit_name, match.group(1))


def test_deploy_files_set_only_variables_the_processes_read() -> None:
    known = _known_variables()
    set_here: dict[str, set[str]] = {}

    def note(where: str, names: set[str]) -> None:
        set_here.setdefault(where, set()).update(names)

    compose = _compose()
    for name, service in compose["services"].items():
        if "build" in service:
            note(f"compose {name}", set(service.get("environment", {})))
    for unit_name in SYSTEMD_UNITS.values():
        note(unit_name, set(_unit_environment(_unit(unit_name))))
    # The runtime stage only: the build stage's variables configure uv, not the processes.
    containerfile = (DEPLOY / "Containerfile").read_text(encoding="utf-8").rsplit("\nFROM ", 1)[1]
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)", containerfile, flags=re.MULTILINE):
        note("Containerfile", set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", block)))
    for path, obj in _kubernetes_objects():
        if obj["kind"] in {"ConfigMap", "Secret"} and obj["metadata"]["name"] == "data-export":
            note(path.name, set(obj.get("data") or obj.get("stringData") or {}))
    for name, workload in _workloads().items():
        for container in workload["pod"]["containers"]:
            note(name, {entry["name"] for entry in container.get("env", [])})
    unknown = {where: sorted(names - known) for where, names in set_here.items() if names - known}
    assert unknown == {}


def test_kubernetes_config_map_and_secret_hold_exactly_the_settings() -> None:
    keys: list[str] = []
    for _, obj in _kubernetes_objects():
        if obj["kind"] in {"ConfigMap", "Secret"} and obj["metadata"]["name"] == "data-export":
            keys.extend(obj.get("data") or obj.get("stringData") or {})
    assert sorted(keys) == sorted(spec.env for spec in SPECS)
    secret_keys = {spec.env for spec in SPECS if spec.secret}
    for _, obj in _kubernetes_objects():
        if obj["kind"] == "ConfigMap":
            assert not secret_keys & set(obj["data"]), "secrets belong in the Secret"


def test_kubernetes_web_probes_point_at_healthz_and_readyz() -> None:
    container = _workloads()["data-export-web"]["pod"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    paths = [
        probe["httpGet"]["path"]
        for _, obj in _kubernetes_objects()
        if obj["kind"] == "Deployment"
        for c in obj["spec"]["template"]["spec"]["containers"]
        for key in ("livenessProbe", "readinessProbe", "startupProbe")
        if (probe := c.get(key))
    ]
    assert set(paths) <= {"/healthz", "/readyz"}


def test_kubernetes_workloads_run_the_procfile_commands_as_non_root() -> None:
    workloads = _workloads()
    for process, (env, command) in _procfile().items():
        pod = workloads[KUBERNETES_WORKLOADS[process]]["pod"]
        container = pod["containers"][0]
        assert container["args"] == command, process
        values = {entry["name"]: entry.get("value") for entry in container.get("env", [])}
        for key, value in env.items():
            assert values[key] == value, (process, key)
    for name, workload in workloads.items():
        pod = workload["pod"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_kubernetes_deployments_select_their_own_pods_and_the_service_finds_the_api() -> None:
    labels = {}
    for _, obj in _kubernetes_objects():
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= template_labels.items(), obj["metadata"]["name"]
            labels[obj["metadata"]["name"]] = template_labels
    services = [obj for _, obj in _kubernetes_objects() if obj["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["data-export-web"]
    assert services[0]["spec"]["selector"].items() <= labels["data-export-web"].items()


def test_kubernetes_autoscaling_targets_the_worker_queues_the_dispatcher_uses() -> None:
    from workers import dispatch

    scaled = {
        obj["spec"]["scaleTargetRef"]["name"]: {
            trigger["metadata"]["listName"] for trigger in obj["spec"]["triggers"]
        }
        for _, obj in _kubernetes_objects()
        if obj["kind"] == "ScaledObject"
    }
    assert scaled["data-export-worker"] >= {
        f"dramatiq:{dispatch.EXPORTS_QUEUE}",
        f"dramatiq:{dispatch.BULK_QUEUE}",
    }
    assert scaled["data-export-verifier"] == {f"dramatiq:{dispatch.VERIFY_QUEUE}"}


def test_kustomization_lists_files_that_exist() -> None:
    kustomization = _load_yaml_documents(KUBERNETES / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (KUBERNETES / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_dashboard_queries_only_metrics_the_code_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    known = _known_metric_series()
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(expressions) >= 20
    unknown = {name for e in expressions for name in _metric_names(e)} - known
    assert unknown == set()


def test_the_queue_and_storage_gauges_the_dashboard_uses_are_exposed() -> None:
    assert _exposed_metric_series() >= BACKLOG_GAUGES


def test_dashboard_covers_what_an_operator_watches() -> None:
    titles = " ".join(
        panel["title"].lower() for panel in json.loads(DASHBOARD.read_text("utf-8"))["panels"]
    )
    for topic in (
        "status",
        "failure rate",
        "duration",
        "throughput",
        "verification",
        "queue depth",
        "oldest message",
        "storage",
    ):
        assert topic in titles, topic


def test_alert_rules_use_known_metrics_and_link_to_the_runbook() -> None:
    known = _known_metric_series()
    anchors = _runbook_anchors()
    rules = _alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "DataExportFailureRateHigh",
        "DataExportVerificationFailed",
        "DataExportQueueBacklogOld",
        "DataExportStuckExports",
        "DataExportStorageGrowth",
    }
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        link = rule["annotations"]["runbook_url"]
        assert link.startswith("docs/operations.md#"), rule["alert"]
        assert link.split("#", 1)[1] in anchors, link
        assert _metric_names(rule["expr"]) - known == set(), rule["alert"]


def test_alert_rules_pass_promtool() -> None:
    promtool = system_tool("promtool", package="prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_config_map_values_pass_the_settings_checks() -> None:
    from pipelines.settings import Settings

    values: dict[str, str] = {}
    for obj in _load_yaml_documents(ROOT / "deploy" / "kubernetes" / "configmap.yaml"):
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "data-export":
            values.update({key: str(value) for key, value in obj["data"].items()})
    # The secrets come from the operator's store; stand-ins that pass the checks.
    secrets = {
        "DATABASE_URL": "postgresql://export@db.example.internal/dataexport",
        "REDIS_URL": "redis://redis.example.internal:6379/0",
        "S3_ACCESS_KEY_ID": "key",
        "S3_SECRET_ACCESS_KEY": "secret",
        "JWT_SECRET": "x" * 48,
    }
    Settings.from_env({**values, **secrets})


def _procfile_queues(process: str) -> str:
    words = _procfile()[process][1]
    return " ".join(words[words.index("--queues") + 1 :])


def test_runbook_names_the_queues_the_procfile_and_autoscaling_use() -> None:
    runbook = " ".join(RUNBOOK.read_text(encoding="utf-8").split())  # lines joined
    worker, verifier = _procfile_queues("worker"), _procfile_queues("verifier")
    row = re.search(r"\| `worker` \| `dramatiq workers\.actors \.\.\. --queues ([^`]+)`", runbook)
    assert row is not None
    assert row.group(1) == worker
    consumed = re.search(r"Workers take `([^`]+)`[^`]*, verifiers `([^`]+)`", runbook)
    assert consumed is not None
    assert consumed.groups() == (worker, verifier)
    keda = runbook[runbook.index("KEDA scales") : runbook.index("(`worker-autoscaling.yaml`)")]
    scaled = {
        trigger["metadata"]["listName"]
        for _, obj in _kubernetes_objects()
        if obj["kind"] == "ScaledObject"
        for trigger in obj["spec"]["triggers"]
    }
    assert set(re.findall(r"`(dramatiq:[a-z.]+)`", keda)) == scaled


def test_cleanup_alert_watches_the_oldest_expired_export_not_how_many_wait() -> None:
    rule = next(rule for rule in _alert_rules() if rule["alert"] == "DataExportCleanupBehind")
    assert _metric_names(rule["expr"]) == {"data_export_oldest_awaiting_cleanup_age_seconds"}
    assert ("oldest_awaiting_cleanup_age_seconds", "oldestAwaitingCleanupAgeSeconds") in (
        HEALTH_FIELDS
    )
