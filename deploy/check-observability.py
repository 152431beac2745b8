#!/usr/bin/env python3
"""Checks the docker-compose deployment's observability files without running them.

- deploy/otel/collector.yml: every pipeline names only receivers, processors and exporters the file
  defines, and exports traces somewhere.
- deploy/grafana/provisioning: every data source has a name, uid, type and URL; the dashboard provider
  reads the folder docker-compose.yml mounts the dashboards at.
- deploy/grafana/dashboards/*.json: valid JSON with a uid and title, unique panel ids, and every panel a
  query (an `expr`) against a provisioned data source.

Prometheus's configuration is promtool's to check, and whether the dashboard's metrics exist is checked
against running services by e2e/tests/ops.rs. Run by deploy/check-compose.sh (Debian's python3-yaml
comes with the docker-compose it installs).
"""
import json
import pathlib
import sys

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
ROOT = DEPLOY.parent
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


otel = yaml.safe_load((DEPLOY / "otel/collector.yml").read_text())
pipelines = otel.get("service", {}).get("pipelines", {})
check("traces" in pipelines, "otel/collector.yml: no traces pipeline")
for name, pipeline in pipelines.items():
    for part in ("receivers", "processors", "exporters"):
        for component in pipeline.get(part, []):
            check(component in (otel.get(part) or {}), f"otel/collector.yml: pipeline {name} names {part[:-1]} {component!r}, which is not defined")

sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
uids = set()
for source in sources:
    for key in ("name", "uid", "type", "url"):
        check(source.get(key), f"grafana data source {source.get('name')!r}: no {key}")
    uids.add(source.get("uid"))

providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/runnel.yml").read_text())["providers"]
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
mounts = compose["services"]["grafana"]["volumes"]
for provider in providers:
    path = provider["options"]["path"]
    check(any(m.endswith(":" + path + ":ro") or m.endswith(":" + path) for m in mounts), f"dashboard provider reads {path}, which docker-compose.yml does not mount")

dashboards = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
check(dashboards, "no dashboard in grafana/dashboards")
for file in dashboards:
    dashboard = json.loads(file.read_text())
    where = file.relative_to(DEPLOY)
    check(dashboard.get("uid") and dashboard.get("title"), f"{where}: no uid or title")
    panels = dashboard.get("panels", [])
    ids = [panel["id"] for panel in panels]
    check(len(ids) == len(set(ids)), f"{where}: panel ids repeat")
    for panel in panels:
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        check(targets and all(t.get("expr") for t in targets), f"{where}: panel {panel.get('title')!r} has no query")
        for target in targets:
            uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
            check(uid in uids, f"{where}: panel {panel.get('title')!r} queries data source {uid!r}, which is not provisioned")

if problems:
    print("\n".join(f"check-observability.py: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"deploy/otel, deploy/grafana: valid ({len(dashboards)} dashboard(s), {len(sources)} data sources)")
