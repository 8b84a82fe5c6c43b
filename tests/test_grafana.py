"""The Grafana dashboard of docker-compose.yml: generated from wharf/grafana.py, its SQL runs on current
ClickHouse (chdb) against Wharf's schema, and docs/grafana.md shows every panel's SQL."""

import json
from pathlib import Path

from schemas.clickhouse import migrate
from streams.sinks.clickhouse import connect
from wharf.grafana import OUT, PANELS, dashboard

ROOT = Path(__file__).resolve().parent.parent


def test_committed_dashboard_is_the_generated_one():
    assert json.loads(OUT.read_text()) == dashboard()
    provider = (OUT.parent / "wharf.yml").read_text()
    assert "/etc/grafana/provisioning/dashboards" in provider
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert uids == {"wharf-clickhouse"} and "uid: wharf-clickhouse" in (OUT.parent.parent / "datasources" / "clickhouse.yml").read_text()


def test_every_panel_query_runs_on_current_clickhouse(chdb_path, unique):
    ch = connect(f"chdb://{chdb_path}?database=wharf")  # the panels name the `wharf` database, as in compose
    migrate(ch)
    for panel in PANELS:
        sql = panel.sql.replace("$__timeFilter(ts)", "ts > now() - INTERVAL 1 HOUR")
        for col in ("minute", "received_ts", "hour"):
            sql = sql.replace(f"$__timeFilter({col})", f"{col} > now() - INTERVAL 1 HOUR")
        assert "$__" not in sql
        ch.query(sql)  # raises with the statement on any SQL error


def test_grafana_doc_shows_each_panels_sql():
    doc = (ROOT / "docs" / "grafana.md").read_text()
    for panel in PANELS:
        assert panel.title in doc and panel.sql in doc, f"{panel.title}: copy its SQL from wharf/grafana.py into docs/grafana.md"


def test_committed_metrics_dashboard_is_the_generated_one():
    """The Prometheus dashboard (wharf/grafana_metrics.py); tests/test_metrics.py checks its series against real scrapes."""
    from wharf import grafana_metrics

    assert json.loads(grafana_metrics.OUT.read_text()) == grafana_metrics.dashboard()
    uids = {t["datasource"]["uid"] for p in grafana_metrics.dashboard()["panels"] for t in p["targets"]}
    assert uids == {"wharf-prometheus"}
    assert "uid: wharf-prometheus" in (OUT.parent.parent / "datasources" / "prometheus.yml").read_text()
    assert all(t["expr"] for p in grafana_metrics.dashboard()["panels"] for t in p["targets"])
