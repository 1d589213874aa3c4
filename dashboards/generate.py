"""Write the Grafana dashboards in dashboards/grafana/ from the panel lists below.

Edit the lists, then run `python dashboards/generate.py`; tests/test_dashboards.py checks that the
committed JSON is what this script writes, that every panel has a datasource, a query and a unit, and
(against a real Prometheus scraping a real Ray) that every query returns plausible series.

The JSON follows the dashboards Ray writes for its own Grafana (session_latest/metrics/grafana/
dashboards/): a `datasource` template variable over Prometheus data sources and a `SessionName`
variable, so the panels sit beside Ray's own in the same Grafana. corrhash's series are the ones
platform/corrhash/launch/live.py exports (Ray prefixes them `ray_`); the cluster rows use Ray's own
node metrics. Panels over GPU series say so in their description: a cluster without GPUs has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "grafana"
SESSION = 'SessionName=~"$SessionName"'
RANK_0 = 'rank="0"'
GPU_NOTE = "Needs a GPU node: a cluster without GPUs has no such series."
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
"""The object form Grafana itself exports at schemaVersion >= 33 (a plain "${datasource}" string is the pre-v33 form,
which Grafana migrates only for dashboards that declare an older schemaVersion)."""


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    """a Grafana unit id: s, percentunit, percent, bytes, short, reqps"""
    queries: list[tuple[str, str]]
    """(PromQL, legend format) pairs"""
    width: int = 12
    gpu: bool = False


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def train_filter(extra: str = "") -> str:
    return "{" + ", ".join(filter(None, ['job_name=~"$job"', SESSION, extra])) + "}"


TRAINING = [
    Row("Training: one series per Ray Train worker, Tune trial or ablation cell", [
        Panel("Throughput per worker", "Documents per second each worker trained in its last epoch (rank 0 of a "
              "trial or cell; every rank of a Ray Train run).", "short",
              [(f"sum by (job_name, run, rank) (ray_corrhash_train_docs_per_second{train_filter()})",
                "{{job_name}} {{run}} rank {{rank}}")]),
        Panel("Throughput per job", "Documents per second trained by each job, all its workers together "
              "(rate of the documents counter).", "short",
              [(f"sum by (job_name) (rate(ray_corrhash_train_documents_total{train_filter()}[$__rate_interval]))",
                "{{job_name}}")]),
        Panel("Epoch time", "Wall time of each worker's last epoch.", "s",
              [(f"max by (job_name, run, rank) (ray_corrhash_train_epoch_seconds{train_filter()})",
                "{{job_name}} {{run}} rank {{rank}}")]),
        Panel("Epochs completed", "Epochs each run has completed.", "short",
              [(f"max by (job_name, run) (ray_corrhash_train_epoch{train_filter()})", "{{job_name}} {{run}}")]),
        Panel("Loss terms", "Mean loss, reconstruction and KL terms per document in the last epoch "
              "(rank 0).", "short",
              [(f"max by (job_name, run, term) (ray_corrhash_train_loss{train_filter(RANK_0)})",
                "{{job_name}} {{run}} {{term}}")]),
        Panel("KL weight", "The KL annealing weight after each epoch.", "short",
              [(f"max by (job_name, run) (ray_corrhash_train_kl_weight{train_filter()})", "{{job_name}} {{run}}")]),
        Panel("Validation precision@k", "Tie-aware validation precision@k of each run's last evaluation.",
              "percentunit",
              [(f"max by (job_name, run) (ray_corrhash_val_precision{train_filter()})", "{{job_name}} {{run}}")]),
        Panel("Best validation precision@k so far", "The best validation precision@k of any run of each job "
              "(Tune: the best trial so far).", "percentunit",
              [(f"max by (job_name) (ray_corrhash_val_best_precision{train_filter()})", "{{job_name}}")]),
    ]),
    Row("Tune searches and ablations", [
        Panel("Tune trials by state", "Trials pending (including those not yet suggested), running, finished, "
              "stopped early by ASHA, failed.", "short",
              [(f'sum by (job_name, state) (ray_corrhash_tune_trials{{{SESSION}}})', "{{job_name}} {{state}}")]),
        Panel("Ablation cells by state", "Cells of each ablation done, running, pending, failed.", "short",
              [(f'sum by (job_name, state) (ray_corrhash_ablation_cells{{{SESSION}}})', "{{job_name}} {{state}}")]),
    ]),
    Row("Cluster (Ray's node metrics)", [
        Panel("Node CPU", "Hardware CPU utilisation of each node.", "percent",
              [(f'avg by (instance) (ray_node_cpu_utilization{{{SESSION}}})', "{{instance}}")]),
        Panel("Node memory used", "Memory used on each node (heap and object store).", "bytes",
              [(f'sum by (instance) (ray_node_mem_used{{{SESSION}}})', "{{instance}}")]),
        Panel("Logical CPUs and GPUs in use", "Ray's logical resources held by tasks and actors.", "short",
              [(f'sum by (Name) (ray_resources{{Name=~"CPU|GPU", State="USED", {SESSION}}})', "{{Name}}")]),
        Panel("Object store memory", "Object store memory in use on each node.", "bytes",
              [(f'sum by (instance) (ray_object_store_memory{{{SESSION}}})', "{{instance}}")]),
        Panel("GPU utilisation", f"Utilisation of each GPU. {GPU_NOTE}", "percent",
              [(f'avg by (instance, GpuIndex) (ray_node_gpus_utilization{{{SESSION}}})', "{{instance}} GPU {{GpuIndex}}")],
              gpu=True),
        Panel("GPU memory used", f"Memory used on each GPU. {GPU_NOTE}", "bytes",
              [(f'sum by (instance, GpuIndex) (ray_node_gram_used{{{SESSION}}}) * 1024 * 1024',
                "{{instance}} GPU {{GpuIndex}}")], gpu=True),
    ]),
]

SEARCH_FILTER = '{job_name=~"$model", ' + SESSION + "}"
SEARCH = [
    Row("Search: jobs/search.py (and any process using corrhash.launch.live.SearchExporter)", [
        Panel("Queries per second", "Queries answered per second by each model.", "reqps",
              [(f"sum by (job_name) (rate(ray_corrhash_search_queries_total{SEARCH_FILTER}[$__rate_interval]))",
                "{{job_name}}")]),
        Panel("Latency quantiles", "p50 / p95 / p99 of the time from a query batch's arrival to its answers.", "s",
              [(f"histogram_quantile({q}, sum by (le, job_name) "
                f"(rate(ray_corrhash_search_latency_seconds_bucket{SEARCH_FILTER}[$__rate_interval])))",
                f"{{{{job_name}}}} p{round(q * 100)}") for q in (0.5, 0.95, 0.99)]),
        Panel("Mean latency", "Mean time from a query batch's arrival to its answers.", "s",
              [(f"sum by (job_name) (rate(ray_corrhash_search_latency_seconds_sum{SEARCH_FILTER}[$__rate_interval])) / "
                f"sum by (job_name) (rate(ray_corrhash_search_latency_seconds_count{SEARCH_FILTER}[$__rate_interval]))",
                "{{job_name}}")]),
        Panel("Queries answered", "Queries answered in the dashboard's time range.", "short",
              [(f"sum by (job_name) (increase(ray_corrhash_search_queries_total{SEARCH_FILTER}[$__range]))", "{{job_name}}")]),
        Panel("Node CPU", "Hardware CPU utilisation of each node.", "percent",
              [(f'avg by (instance) (ray_node_cpu_utilization{{{SESSION}}})', "{{instance}}")]),
        Panel("Node memory used", "Memory used on each node (heap and object store).", "bytes",
              [(f'sum by (instance) (ray_node_mem_used{{{SESSION}}})', "{{instance}}")]),
    ]),
]


def variable(name: str, query: str, description: str) -> dict:
    return {"name": name, "type": "query", "datasource": dict(DATASOURCE), "definition": query,
            "query": {"query": query, "refId": f"{name}-variable"}, "description": description,
            "includeAll": True, "multi": True, "allValue": ".+", "refresh": 2, "sort": 1, "hide": 0,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": []}


def templating(job_variable: dict) -> dict:
    return {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 0, "includeAll": False,
         "multi": False, "current": {}, "options": [], "description": "The Prometheus data source Ray's Grafana uses."},
        {**variable("SessionName", "label_values(ray_node_cpu_utilization, SessionName)",
                    "Ray sessions (one per `ray start --head`)."), "multi": False, "includeAll": True},
        job_variable,
    ]}


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    return {
        "id": panel_id, "type": "timeseries", "title": panel.title, "description": panel.description,
        "datasource": dict(DATASOURCE), "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "min": 0, "custom": {"lineWidth": 1, "fillOpacity": 0}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i), "datasource": dict(DATASOURCE)}
                    for i, (expr, legend) in enumerate(panel.queries)],
    }


def dashboard(title: str, uid: str, rows: list[Row], job_variable: dict) -> dict:
    panels, y, panel_id = [], 0, 1
    for row in rows:
        panels.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(panel_json(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {"title": title, "uid": uid, "tags": ["corrhash"], "editable": True, "schemaVersion": SCHEMA_VERSION,
            "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "timezone": "",
            "graphTooltip": 1, "annotations": {"list": []}, "links": [], "templating": templating(job_variable),
            "panels": panels}


DASHBOARDS = {
    "corrhash_training_dashboard.json": dashboard(
        "corrhash: training, tuning and ablations", "corrhashTraining", TRAINING,
        variable("job", "label_values(ray_corrhash_train_epoch, job_name)", "Train, Tune or ablation job names.")),
    "corrhash_search_dashboard.json": dashboard(
        "corrhash: search", "corrhashSearch", SEARCH,
        variable("model", "label_values(ray_corrhash_search_queries_total, job_name)", "The models being searched.")),
}


def render() -> dict[str, str]:
    """{file name: JSON text} of every dashboard."""
    return {name: json.dumps(board, indent=2) + "\n" for name, board in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        temp = OUT / f".{name}.tmp"
        temp.write_text(text)
        temp.replace(OUT / name)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
