"""The one configuration loader: documented defaults, overrides, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.runtime.config import ENV_VARS, ConfigError, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_put_everything_under_one_data_folder(tmp_path: Path) -> None:
    settings = load_settings("registry", {"HUB_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path.resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/registry.sqlite3"
    assert settings.nats_servers == ["nats://127.0.0.1:4222"]
    assert (settings.gateway_port, settings.ui_port) == (8600, 8601)
    assert settings.jetstream_replicas == 1
    assert settings.layout == "single"  # ./hub start runs every service in one process


def test_overrides_and_a_per_service_database_url() -> None:
    settings = load_settings(
        "stats",
        {
            "HUB_NATS_URL": "nats://a:4222, nats://b:4222",
            "HUB_STATS_DATABASE_URL": "postgresql://hub:pw@db:5432/stats",
            "HUB_REGISTRY_DATABASE_URL": "sqlite:////elsewhere.sqlite3",
            "HUB_REQUEST_TIMEOUT_S": "2.5",
            "HUB_JETSTREAM_REPLICAS": "3",
        },
    )
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]
    assert settings.database_url == "postgresql://hub:pw@db:5432/stats"
    assert settings.request_timeout_s == 2.5
    assert settings.jetstream_replicas == 3


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HUB_GATEWAY_PORT": "eighty"}, "HUB_GATEWAY_PORT"),
        ({"HUB_REQUEST_TIMEOUT_S": "0"}, "HUB_REQUEST_TIMEOUT_S"),
        ({"HUB_LOG_FORMAT": "xml"}, "HUB_LOG_FORMAT"),
        ({"HUB_NATS_URL": "localhost:4222"}, "HUB_NATS_URL"),
        ({"HUB_PROMPT_DATABASE_URL": "mysql://x"}, "HUB_PROMPT_DATABASE_URL"),
        ({"HUB_METRICS_ALLOW": "prometheus.internal"}, "HUB_METRICS_ALLOW"),
        ({"HUB_UI_COMFYUI_PROBE_URL": "localhost:8188"}, "HUB_UI_COMFYUI_PROBE_URL"),
        ({"HUB_LAYOUT": "both"}, "HUB_LAYOUT"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings("prompt", env)


def test_metrics_allow_is_loopback_by_default_and_takes_networks_or_any() -> None:
    assert load_settings("gateway", {}).metrics_allow == ("127.0.0.0/8", "::1/128")
    assert load_settings("gateway", {"HUB_METRICS_ALLOW": "10.1.2.3, 172.16.0.0/12"}).metrics_allow == (
        "10.1.2.3/32",
        "172.16.0.0/12",
    )
    assert load_settings("gateway", {"HUB_METRICS_ALLOW": "*"}).metrics_allow == ("0.0.0.0/0", "::/0")


def test_the_readme_documents_every_variable() -> None:
    text = README.read_text()
    for name in ENV_VARS:
        assert f"`{name}`" in text, f"{name} is missing from the README's configuration table"


def test_the_comfyui_probe_address_defaults_to_comfyuis_own_and_may_be_turned_off() -> None:
    assert load_settings("ui", {}).ui_comfyui_probe_url == "http://127.0.0.1:8188"
    assert load_settings("ui", {"HUB_UI_COMFYUI_PROBE_URL": "http://10.0.0.5:8188/"}).ui_comfyui_probe_url == (
        "http://10.0.0.5:8188"
    )
    assert load_settings("ui", {"HUB_UI_COMFYUI_PROBE_URL": ""}).ui_comfyui_probe_url == ""


def test_tracing_is_on_only_with_an_otlp_endpoint_and_not_when_the_sdk_is_disabled() -> None:
    assert load_settings("dispatch", {}).otlp_endpoint == ""
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert load_settings("dispatch", on).otlp_endpoint == "http://collector:4318"
    traces_only = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}
    assert load_settings("dispatch", traces_only).otlp_endpoint == "http://collector:4318/v1/traces"
    assert load_settings("dispatch", {**on, "OTEL_SDK_DISABLED": "true"}).otlp_endpoint == ""


def test_the_fork_server_is_on_where_several_processes_share_it_unless_set() -> None:
    assert not load_settings("launcher", {}).fork_server  # single: one process, ~95 MB RSS saved
    assert load_settings("launcher", {"HUB_LAYOUT": "split"}).fork_server
    assert load_settings("launcher", {"HUB_FORK_SERVER": "on"}).fork_server
    assert not load_settings("launcher", {"HUB_LAYOUT": "split", "HUB_FORK_SERVER": "off"}).fork_server
    with pytest.raises(ConfigError, match="HUB_FORK_SERVER='maybe' is not valid; use one of: auto, on, off"):
        load_settings("launcher", {"HUB_FORK_SERVER": "maybe"})
