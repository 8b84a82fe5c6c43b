"""The CLI is usable from day one, and docs/settings.md's settings table is the code's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.runtime.kafka_auth import kafka_client
from wharf.cli import app
from schemas.settings import Settings, describe
from wharf import settingsdoc

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("infra", "worker", "demo", "settings", "evaluate"):
        assert command in result.output
    assert runner.invoke(app, ["infra", "--help"]).exit_code == 0


def test_console_script_is_installed():
    out = subprocess.run([str(Path(sys.executable).parent / "wharf"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_settings_doc_table_matches_the_settings_object():
    doc = (ROOT / "docs" / "settings.md").read_text()
    table = re.search(r"<!-- settings-table:start -->\n(.*?)<!-- settings-table:end -->", doc, re.S).group(1)
    documented = re.findall(r"^\| `(WHARF_[A-Z_]+)` \| `([^`]*)` \| (.*) \|$", table, re.M)
    stale = "docs/settings.md's table is stale: run `python -m wharf.settingsdoc` and commit the file"
    assert [(env, default, desc) for env, default, desc in documented] == describe(), stale
    assert len(documented) == len(Settings.model_fields), stale
    assert settingsdoc.render(doc) == doc, stale


def test_settings_markdown_prints_the_documented_table():
    result = runner.invoke(app, ["settings", "--markdown"])
    assert result.exit_code == 0 and result.output == settingsdoc.table()


def test_invalid_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("WHARF_TOPIC_PARTITIONS", "zero")
    from schemas.settings import get_settings

    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["settings"])
        assert result.exit_code == 2
        assert "topic_partitions" in result.output
    finally:
        get_settings.cache_clear()


def test_toml_file_is_read_below_the_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "wharf.toml"
    cfg.write_text('topic_partitions = 3\nmqtt_port = 2883\n')
    monkeypatch.setenv("WHARF_CONFIG", str(cfg))
    monkeypatch.setenv("WHARF_MQTT_PORT", "3883")
    s = Settings()
    assert s.topic_partitions == 3 and s.mqtt_port == 3883


def test_workers_advertise_an_address_other_workers_can_reach(monkeypatch):
    """Faust forwards a request to the owner's advertised URL: a wildcard bind must not be advertised."""
    monkeypatch.setenv("WHARF_CONFIG", "/nonexistent.toml")
    assert Settings().advertised_web_host() == "127.0.0.1"
    assert Settings(web_host="10.1.2.3").advertised_web_host() == "10.1.2.3"
    every = Settings(web_host="0.0.0.0", kafka_bootstrap="127.0.0.1:9092")
    assert every.advertised_web_host() == "127.0.0.1"  # the address on the route to Kafka
    assert Settings(web_host="0.0.0.0", web_advertised_host="worker-3.internal").advertised_web_host() == "worker-3.internal"


def test_infra_status_names_every_service():
    result = runner.invoke(app, ["infra", "status"])
    for name in ("kafka", "mosquitto", "clickhouse"):
        assert name in result.output


def test_nab_evaluation_reproduces_the_published_baseline():
    """`wharf evaluate anomaly` end to end, with NAB's own windowed-Gaussian detector on the 41 shared files:
    29.1 / 14.8 / 35.8, as NAB's published result files score on exactly these files."""
    nab = ROOT.parent / "shared" / "datasets" / "nab"
    assert nab.is_dir(), "the tests need ../shared/datasets"
    result = runner.invoke(app, ["evaluate", "anomaly", "--nab", str(nab), "--detector", "windowedGaussian"])
    assert result.exit_code == 0, result.output
    scores = dict(re.findall(r"^\s+(standard|reward_low_FP_rate|reward_low_FN_rate)\s+score\s+(-?[\d.]+)", result.output, re.M))
    assert scores == {"standard": "29.1", "reward_low_FP_rate": "14.8", "reward_low_FN_rate": "35.8"}


@pytest.mark.infra
def test_worker_topics_exist_before_faust_subscribes(stack, unique):
    """A topic created after the consumer subscribed is assigned only at its next metadata refresh (5 min); a
    changelog missing from the group leader's metadata was not assigned at all, and its table was dropped
    (`streams.runtime.topics.faust_topics`). So the tables' changelogs and Faust's leader topic are created first too,
    as Faust would."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    import agents  # noqa: F401 - declares the tables
    from streams.runtime.app import app as faust_app
    from streams.runtime.topics import CATALOGUE_FANOUT, LEADER, faust_topics, internal_topic_name
    from wharf.cli import _create_worker_topics

    tables = list(faust_app.tables.values())
    ours = faust_topics(stack.model_copy(update={"app_id": faust_app.conf.id}), tables)
    faust_own = {faust_app._leader_assignor._leader_topic_name: 1,  # noqa: SLF001 - the names Faust would create
                 **{t.changelog_topic.get_topic_name(): t.changelog_topic.partitions for t in tables}}
    assert {name: p for p, configs in ours.items() for name in configs} == faust_own

    s = stack.model_copy(update={"app_id": f"wharf-test-topics-{unique}", "topic_clicks": f"test.clicks.{unique}"})
    _create_worker_topics(s, tables)
    changelogs = [internal_topic_name(s, f"{t.name}-changelog") for t in tables]
    leader = internal_topic_name(s, LEADER)

    async def described() -> tuple[dict[str, int], dict[str, dict[str, str]]]:
        admin = AIOKafkaAdminClient(**kafka_client(s))
        await admin.start()
        try:
            wanted = [internal_topic_name(s, CATALOGUE_FANOUT), s.topic_clicks, leader, *changelogs]
            partitions = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(wanted)}
            keys = {"cleanup.policy": None, "retention.ms": None}
            configs = {}
            for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n, keys) for n in changelogs]):
                for _, _, _, name, entries in response.resources:
                    configs[name] = {e[0]: e[1] for e in entries}
            return partitions, configs
        finally:
            await admin.close()

    found, configs = asyncio.run(described())
    assert found == {internal_topic_name(s, CATALOGUE_FANOUT): s.topic_partitions, s.topic_clicks: s.topic_partitions, leader: 1,
                     **{n: s.topic_partitions for n in changelogs}}
    assert configs[internal_topic_name(s, "sensor-state-changelog")]["cleanup.policy"] == "compact"
    windowed = configs[internal_topic_name(s, "commerce-item-sentiment-hourly-changelog")]  # a tumbling window expiring after 2 days
    assert (windowed["cleanup.policy"], windowed["retention.ms"]) == ("compact,delete", str(2 * 86400 * 1000))
