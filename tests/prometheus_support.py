"""A real Prometheus server for tests, and checks of the shipped dashboard and rules against it.

Grafana cannot be installed here, so the dashboard is validated the way Grafana would use it:
each panel query, with Grafana's variables substituted, goes through Prometheus' HTTP API
while Prometheus scrapes real riskstream metrics (a `WorkerMetrics` in this process, or a
real worker). Typical use:

    with running_prometheus(["127.0.0.1:9108"]) as prom:
        prom.wait_for_targets_up()
        ...produce traffic...
        assert_expressions_evaluate(prom, dashboard_expressions() + rule_expressions())
        assert all(panels_with_data(prom)[title] for title in CORE_PANELS)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "riskstream.json"
# The job name the rules and dashboard filter on (up{job="riskstream"}).
JOB = "riskstream"

# Panels an operator cannot do without; each must show data once events flow.
CORE_PANELS: tuple[str, ...] = (
    "Workers",
    "Healthy workers",
    "Events in and scored per second by topic",
    "Alerts per second by model and severity",
    "Dead letters by reason",
    "Event-to-score latency (p50, p95, p99)",
    "Inference latency (p50, p95, p99)",
    "Batch size (rows per inference)",
    "Score distribution: $model",
    "Consumer lag per partition",
    "Model versions in service",
    "Worker count",
    "Worker health",
)


class PrometheusError(RuntimeError):
    """Prometheus could not start, or answered a query with an error."""


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- the server ----------------------------------------------------------------------------


@dataclass
class PrometheusServer:
    """A Prometheus child process with its own config and storage in a temporary folder."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PrometheusError(f"GET {path}: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (a scalar comes back as one sample).

        Raises PrometheusError with Prometheus' own message for an invalid expression."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] == "matrix":
            return [
                {"metric": series["metric"], "value": series["values"][-1]}
                for series in data["result"]
                if series["values"]
            ]
        return list(data["result"])

    def values(self, expr: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expr)]

    def has_data(self, expr: str) -> bool:
        """At least one series with a finite value (NaN quantiles of idle histograms: no)."""
        return any(math.isfinite(value) for value in self.values(expr))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["activeTargets"])

    def wait_for_targets_up(self, timeout: float = 30.0) -> None:
        """Until every configured target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if targets and all(target["health"] == "up" for target in targets):
                return
            time.sleep(0.2)
        states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
        raise PrometheusError(f"targets not up after {timeout:.0f} s: {states}")

    def wait_for(
        self,
        expr: str,
        timeout: float = 30.0,
        predicate: Callable[[list[float]], bool] | None = None,
    ) -> list[float]:
        """Poll `expr` until predicate(values) (default: some finite value); return the values."""
        check = predicate or (lambda values: any(math.isfinite(v) for v in values))
        deadline = time.monotonic() + timeout
        values: list[float] = []
        while time.monotonic() < deadline:
            values = self.values(expr)
            if check(values):
                return values
            time.sleep(0.2)
        raise PrometheusError(f"{expr!r} never satisfied the condition; last values {values}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def prometheus_config(
    targets: Sequence[str],
    *,
    job: str = JOB,
    scrape_interval: str = "1s",
    rule_files: Sequence[Path] = (RULES_FILE,),
) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


def start_prometheus(
    targets: Sequence[str],
    *,
    job: str = JOB,
    scrape_interval: str = "1s",
    rule_files: Sequence[Path] = (RULES_FILE,),
    startup_timeout: float = 30.0,
) -> PrometheusServer:
    """Start Prometheus on a free local port, scraping `targets` (host:port) as `job`.

    The shipped rules are loaded by default, so recording rules used by the dashboard and
    alert expressions exist. The caller must `stop()` it (or use `running_prometheus`)."""
    binary = prometheus_binary()
    if binary is None:
        raise PrometheusError(
            "the prometheus binary is not installed: apt-get install -y prometheus"
        )
    workdir = Path(tempfile.mkdtemp(prefix="riskstream-prometheus-"))
    config_path = workdir / "prometheus.yml"
    config = prometheus_config(
        targets, job=job, scrape_interval=scrape_interval, rule_files=rule_files
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, workdir)
    try:
        _wait_ready(server, startup_timeout)
    except BaseException:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return server


def _wait_ready(server: PrometheusServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with code {server.process.returncode}:\n{server.log}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise PrometheusError(f"prometheus not ready after {timeout:.0f} s:\n{server.log}")


@contextlib.contextmanager
def running_prometheus(targets: Sequence[str], **options: Any) -> Iterator[PrometheusServer]:
    server = start_prometheus(targets, **options)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


# -- a MetricsServer in a background thread (the test thread stays synchronous) ------------


class BackgroundMetricsServer:
    """Runs `riskstream.metrics.MetricsServer` on its own event loop in a daemon thread."""

    def __init__(
        self,
        registry: Any,
        health: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        from riskstream.metrics import MetricsServer

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server = MetricsServer(host, port, registry, health or (lambda: (True, {})))

    @property
    def target(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> BackgroundMetricsServer:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


# -- what to evaluate ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """One PromQL expression from a shipped file, named after where it comes from."""

    origin: str
    expr: str


def load_dashboard(path: Path = DASHBOARD_FILE) -> dict[str, Any]:
    return json.loads(path.read_text())


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from (p for p in panel.get("panels", []) if p.get("type") != "row")
        else:
            yield panel


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable's value when 'All' is selected (the widest query)."""
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "datasource":
            continue
        values[variable["name"]] = variable.get("allValue") or ".*"
    return values


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def render_expr(
    expr: str,
    variables: dict[str, str] | None = None,
    *,
    rate_interval: str = "15s",
    interval: str = "5s",
    range_: str = "1m",
) -> str:
    """Substitute Grafana's variables the way Grafana would before sending the query.

    $__rate_interval must cover at least two scrapes of the test Prometheus (1 s interval);
    an unknown variable is an error, since Grafana would send it to Prometheus verbatim."""
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        "__range_s": str(_seconds(range_)),
    }
    known = {**builtins, **(variables or {})}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in known:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        return known[name]

    return _VARIABLE.sub(substitute, expr)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]]


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>.+),\s*)?(?P<label>\w+)\)$")


def _variable_query_expr(query: str) -> str | None:
    """Grafana's label_values(metric, label) as the PromQL it stands for."""
    match = _LABEL_VALUES.match(query.strip())
    if match is None:
        return query
    if match.group("metric") is None:
        return None  # label_values(label) uses the labels API, not a query
    return f"group by ({match.group('label')}) ({match.group('metric')})"


def dashboard_expressions(dashboard: dict[str, Any] | None = None) -> list[Expression]:
    """Every PromQL expression of the dashboard (panels, variables, annotations), rendered."""
    dashboard = dashboard or load_dashboard()
    variables = dashboard_variables(dashboard)
    found: list[Expression] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            origin = f"panel {panel['title']!r} target {target.get('refId')}"
            found.append(Expression(origin, render_expr(target["expr"], variables)))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        expr = _variable_query_expr(query)
        if expr is not None:
            found.append(Expression(f"variable ${variable['name']}", expr))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            found.append(
                Expression(
                    f"annotation {annotation['name']!r}",
                    render_expr(annotation["expr"], variables),
                )
            )
    return found


def load_rules(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def rule_expressions(path: Path = RULES_FILE) -> list[Expression]:
    return [
        Expression(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"])
        for rule in load_rules(path)
    ]


# -- the checks ----------------------------------------------------------------------------


def assert_expressions_evaluate(
    prom: PrometheusServer, expressions: Iterable[Expression | str]
) -> None:
    """Every expression must be accepted and evaluated by Prometheus; lists all failures."""
    failures: list[str] = []
    count = 0
    for item in expressions:
        expression = item if isinstance(item, Expression) else Expression("expression", item)
        count += 1
        try:
            prom.query(expression.expr)
        except PrometheusError as exc:
            failures.append(f"{expression.origin}: {exc}\n    {expression.expr}")
    assert count > 0, "no expressions to evaluate"
    assert not failures, f"{len(failures)} of {count} expressions fail:\n" + "\n".join(failures)


def panels_with_data(
    prom: PrometheusServer, dashboard: dict[str, Any] | None = None
) -> dict[str, bool]:
    """Panel title -> whether any of its queries returns a finite value right now."""
    dashboard = dashboard or load_dashboard()
    variables = dashboard_variables(dashboard)
    result: dict[str, bool] = {}
    for panel in iter_panels(dashboard):
        exprs = [render_expr(t["expr"], variables) for t in panel.get("targets", [])]
        result[panel["title"]] = any(prom.has_data(expr) for expr in exprs)
    return result
