"""The one configuration loader: environment variables (12-factor) with documented defaults.

Every variable is listed in `ENV_VARS` (the README's table is checked against it by a test).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from contracts.runtime.host_guard import ANY, normalized_origin

LogFormat = Literal["auto", "json", "console"]

# name -> (default, description). `{service}` in a name stands for the upper-case service name.
ENV_VARS: dict[str, tuple[str, str]] = {
    "HUB_NATS_URL": ("nats://127.0.0.1:4222", "NATS server URL(s), comma-separated for a cluster"),
    "HUB_DATA_DIR": ("./data", "Folder for SQLite files, the local nats-server's JetStream store and logs"),
    "HUB_{service}_DATABASE_URL": (
        "sqlite:///<HUB_DATA_DIR>/<service>.sqlite3",
        "Database of one service: `sqlite:///path` or `postgresql://user:pass@host/db`",
    ),
    "HUB_LOG_FORMAT": ("auto", "`json`, `console`, or `auto` (console on a terminal, JSON otherwise)"),
    "HUB_LOG_LEVEL": ("info", "`debug`, `info`, `warning` or `error`"),
    "HUB_REQUEST_TIMEOUT_S": ("10", "Timeout of one request between services, in seconds"),
    "HUB_SHUTDOWN_TIMEOUT_S": ("20", "How long a stopping service waits for requests in flight"),
    "HUB_JETSTREAM_REPLICAS": ("1", "Replicas of each JetStream stream: 1 on one server, 3 on a cluster"),
    "HUB_GATEWAY_HOST": ("127.0.0.1", "Address the gateway (MCP, REST, images) listens on"),
    "HUB_GATEWAY_PORT": ("8600", "Port of the gateway"),
    "HUB_GATEWAY_TOOL_BUDGET_S": ("50", "Longest an MCP generate_image call is held before it returns the job id"),
    "HUB_GATEWAY_THUMBNAIL_MAX_BYTES": (
        "49152",
        "Largest inline preview (JPEG; WebP for an image with transparency) in an MCP tool result, in bytes",
    ),
    "HUB_GATEWAY_ALLOWED_HOSTS": (
        "",
        "Names (and addresses) clients reach the gateway under, beyond loopback and `HUB_GATEWAY_HOST`: other "
        "`Host` headers get 403 (DNS-rebinding protection); comma-separated, `*.example.com` for subdomains, `*` "
        "for any",
    ),
    "HUB_GATEWAY_ALLOWED_ORIGINS": (
        "",
        "Browser origins (`https://app.example.com`) that may call the gateway besides pages on its own names; "
        "`*` for any",
    ),
    "HUB_UI_HOST": ("127.0.0.1", "Address the admin UI listens on"),
    "HUB_UI_PORT": ("8601", "Port of the admin UI"),
    "HUB_UI_ALLOWED_HOSTS": ("", "As `HUB_GATEWAY_ALLOWED_HOSTS`, for the admin UI"),
    "HUB_UI_ALLOWED_ORIGINS": ("", "As `HUB_GATEWAY_ALLOWED_ORIGINS`, for the admin UI"),
    "HUB_ADMIN_PASSWORD": ("", "Admin password set on the UI's first start (required to log in)"),
    "HUB_UI_COMFYUI_PROBE_URL": (
        "http://127.0.0.1:8188",
        "Where the dashboard looks for a ComfyUI that is not an instance yet, to offer adding it (ComfyUI's "
        "default address); empty: do not look",
    ),
    "HUB_UI_SIGNIN_FREE_FAILURES": (
        "3",
        "Failed sign-ins in a row (from one client address, or for one user name) before further attempts wait",
    ),
    "HUB_UI_SIGNIN_DELAY_S": (
        "2",
        "The first wait after those failures, in seconds; it doubles with each further failure (up to the lock)",
    ),
    "HUB_UI_SIGNIN_LOCK_FAILURES": (
        "10",
        "Failed sign-ins in a row after which the client address or user name is locked (even the right password)",
    ),
    "HUB_UI_SIGNIN_LOCK_S": (
        "900",
        "How long a lock lasts, in seconds; failures older than this are forgotten",
    ),
    "HUB_DISPATCH_STRATEGY": (
        "pull",
        "`pull` (an instance takes a job when it has a free slot), `pull_affinity` (pull, preferring an instance "
        "that holds the job's models) or `round_robin`",
    ),
    "HUB_DISPATCH_MODEL_SWITCH_S": (
        "10",
        "pull_affinity: seconds a model switch is assumed to take until measured per render type and instance",
    ),
    "HUB_DISPATCH_FAIR_SHARE": (
        "on",
        "`on`: a free slot goes to the API key with the least recent run time (divided by its weight); `off`: to "
        "the oldest waiting job, whatever its key",
    ),
    "HUB_DISPATCH_FAIR_SHARE_WINDOW_S": ("120", "Fair share: how far back a key's run time counts"),
    "HUB_DISPATCH_HEALTH_INTERVAL_S": ("5", "How often the dispatcher polls each ComfyUI instance"),
    "HUB_DISPATCH_STALL_TIMEOUT_S": ("60", "Silence from a running job after which its instance is probed for a hang"),
    "HUB_DISPATCH_JOB_TIMEOUT_S": ("3600", "Longest time one attempt of a job may run"),
    "HUB_DISPATCH_MAX_ATTEMPTS": ("3", "Attempts of a job (on other instances) before it fails"),
    "HUB_DISPATCH_TAKEOVER_S": ("30", "After this long, the jobs and slots of a dispatcher that died are taken over"),
    "HUB_TEST_PAUSE_AFTER_FETCH_S": (
        "0",
        "Tests only, never in production: seconds a dispatcher waits after fetching a job, before any lease names "
        "it (a kill -9 test lands in that window)",
    ),
    "HUB_TEST_PAUSE_BEFORE_ADMIT_S": (
        "0",
        "Tests only, never in production: seconds a dispatcher waits after naming a fetched job, before reading "
        "its row (a kill -9 test lands in that window)",
    ),
    "HUB_INPUT_URL_ALLOW": (
        "",
        "Hosts and networks (comma-separated names, IPs or CIDRs) that `input_image.url` may fetch from although "
        "they are loopback, private, link-local or otherwise not public; empty: public addresses only",
    ),
    "HUB_METRICS_ALLOW": (
        "127.0.0.0/8,::1",
        "Client addresses and networks (comma-separated IPs or CIDRs) that may read the gateway's `/metrics` "
        "(no API key; others get 403); `*` for any",
    ),
    "OTEL_EXPORTER_OTLP_ENDPOINT": (
        "",
        "OpenTelemetry: base URL of an OTLP/HTTP collector (e.g. `http://127.0.0.1:4318`); set, every service sends "
        "its traces there; empty: no tracing, at no cost",
    ),
    "HUB_NATS_PORT": ("4222", "`./hub start` only: client port of the local nats-server"),
    "HUB_NATS_MONITOR_PORT": (
        "0",
        "`./hub start` only: HTTP monitoring port of the local nats-server (0: off)",
    ),
    "HUB_LAYOUT": (
        "single",
        "`./hub start` only: `single` runs every service in one process (least memory), `split` each service in a "
        "process of its own (as containers do); either way they talk over NATS",
    ),
    "HUB_FORK_SERVER": (
        "auto",
        "`./hub start` only, on Linux: `on` forks every service (start and restart after a crash) from a process "
        "that imported them once, so a crashed service serves again ~0.1-0.9 s later instead of ~1-5 s; `off` saves "
        "that process's memory (~33 MB PSS, ~95 MB RSS in `single`); `auto`: on in `split` (six processes share "
        "its pages: less memory in all), off in `single` (a crashed hub then serves again in ~2.5 s, not ~1 s)",
    ),
}


class ConfigError(Exception):
    """A configuration value is wrong; the message names the variable and the fix."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    service: str
    nats_url: str
    data_dir: Path
    database_url: str
    log_format: LogFormat
    log_level: Literal["debug", "info", "warning", "error"]
    request_timeout_s: float
    shutdown_timeout_s: float
    jetstream_replicas: int
    gateway_host: str
    gateway_port: int
    gateway_tool_budget_s: float
    gateway_thumbnail_max_bytes: int
    gateway_allowed_hosts: tuple[str, ...]
    gateway_allowed_origins: tuple[str, ...]
    ui_host: str
    ui_port: int
    ui_allowed_hosts: tuple[str, ...]
    ui_allowed_origins: tuple[str, ...]
    admin_password: str
    ui_comfyui_probe_url: str
    ui_signin_free_failures: int
    ui_signin_delay_s: float
    ui_signin_lock_failures: int
    ui_signin_lock_s: float
    nats_port: int
    nats_monitor_port: int
    layout: Literal["single", "split"]
    fork_server: bool
    dispatch_strategy: Literal["pull", "pull_affinity", "round_robin"]
    dispatch_model_switch_s: float
    dispatch_fair_share: bool
    dispatch_fair_share_window_s: float
    dispatch_health_interval_s: float
    dispatch_stall_timeout_s: float
    dispatch_job_timeout_s: float
    dispatch_max_attempts: int
    dispatch_takeover_s: float
    test_pause_after_fetch_s: float
    test_pause_before_admit_s: float
    input_url_allow: tuple[str, ...]
    metrics_allow: tuple[str, ...]
    otlp_endpoint: str = ""  # tracing is on when set (contracts.runtime.tracing)

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]


def _otlp_endpoint(env: Mapping[str, str]) -> str:
    """Where traces go ("": tracing off): the standard variable, or the traces-only one; OTEL_SDK_DISABLED=true (the
    SDK's own off switch) turns tracing off whatever they say."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    general = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ENV_VARS["OTEL_EXPORTER_OTLP_ENDPOINT"][0]).strip()
    return general or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()


def database_env_var(service: str) -> str:
    return f"HUB_{service.upper()}_DATABASE_URL"


def _probe_url(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, ENV_VARS[name][0]).strip().rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={value!r} must start with http:// or https:// (or be empty: do not look)")
    return value


def default_database_url(data_dir: Path, service: str) -> str:
    return f"sqlite:///{data_dir / f'{service}.sqlite3'}"


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float], *, minimum: float) -> int | float:
    raw = env.get(name, ENV_VARS[name][0]).strip()
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}; set it to e.g. {ENV_VARS[name][0]}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


Choice = TypeVar("Choice", bound=str)


def _fork_server(env: Mapping[str, str]) -> bool:
    choice = _choice(env, "HUB_FORK_SERVER", ("auto", "on", "off"))
    if choice == "auto":  # worth its memory where several service processes share its pages
        return _choice(env, "HUB_LAYOUT", ("single", "split")) == "split"
    return choice == "on"


def _choice(env: Mapping[str, str], name: str, choices: tuple[Choice, ...]) -> Choice:
    raw = env.get(name, ENV_VARS[name][0]).strip().lower()
    for choice in choices:  # returns the choice itself, so the type checker knows it is one of them
        if raw == choice:
            return choice
    raise ConfigError(f"{name}={raw!r} is not valid; use one of: {', '.join(choices)}")


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


def _host_or_network_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    entries = tuple(e.strip().lower().rstrip(".") for e in env.get(name, ENV_VARS[name][0]).split(",") if e.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not _HOST_NAME.match(entry):
                raise ConfigError(
                    f"{name}: {entry!r} is neither a host name, an IP address nor a network; "
                    "write e.g. images.internal,127.0.0.1,10.0.0.0/8"
                ) from None
    return entries


def _network_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """IP networks (an address is a /32 or /128), or `*` for any."""
    entries = _entries(env, name)
    if entries == [ANY]:
        return ("0.0.0.0/0", "::/0")
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"{name}: {entry!r} is not an IP address or network; write e.g. {name}=127.0.0.1,10.0.0.0/8 "
                "(or * for any)"
            ) from None
    return tuple(str(ipaddress.ip_network(entry, strict=False)) for entry in entries)


def _entries(env: Mapping[str, str], name: str) -> list[str]:
    return [e.strip() for e in env.get(name, ENV_VARS[name][0]).split(",") if e.strip()]


def _allowed_host(entry: str) -> str | None:
    """A host name, `*.suffix`, an address (IPv6 with or without brackets) or `*`, as HostGuard compares it;
    None for anything else (a scheme, a port, a path)."""
    text = entry.lower().rstrip(".")
    if text == ANY:
        return ANY
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare if _HOST_NAME.match(bare.removeprefix("*.")) else None


def _allowed_hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    allowed = []
    for entry in _entries(env, name):
        host = _allowed_host(entry)
        if host is None:
            raise ConfigError(
                f"{name}: {entry!r} is not a host name or address; write names without scheme or port, "
                f"e.g. {name}=hub.example.com,*.hub.internal,10.0.0.5"
            )
        allowed.append(host)
    return tuple(allowed)


def _allowed_origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    allowed = []
    for entry in _entries(env, name):
        normalized = ANY if entry == ANY else normalized_origin(entry)
        if normalized is None:
            raise ConfigError(
                f"{name}: {entry!r} is not an origin; write scheme://host[:port] without a path, "
                f"e.g. {name}=https://app.example.com"
            )
        allowed.append(normalized)
    return tuple(allowed)


def load_settings(service: str, env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings of `service` from the environment, failing with a message that names the variable."""
    env = os.environ if env is None else env

    def text(name: str) -> str:
        return env.get(name, ENV_VARS[name][0]).strip()

    data_dir = Path(text("HUB_DATA_DIR")).expanduser().resolve()
    database_url = env.get(database_env_var(service), "").strip() or default_database_url(data_dir, service)
    if not database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(
            f"{database_env_var(service)}={database_url!r} is not supported; "
            "use sqlite:///path/to/file.sqlite3 or postgresql://user:password@host:5432/database"
        )
    nats_url = text("HUB_NATS_URL")
    if not nats_url or any(
        not u.strip().startswith(("nats://", "tls://", "ws://", "wss://")) for u in nats_url.split(",")
    ):
        raise ConfigError(f"HUB_NATS_URL={nats_url!r} must be nats://host:port (comma-separated for a cluster)")
    return Settings(
        service=service,
        nats_url=nats_url,
        data_dir=data_dir,
        database_url=database_url,
        log_format=_choice(env, "HUB_LOG_FORMAT", ("auto", "json", "console")),
        log_level=_choice(env, "HUB_LOG_LEVEL", ("debug", "info", "warning", "error")),
        request_timeout_s=_number(env, "HUB_REQUEST_TIMEOUT_S", float, minimum=0.1),
        shutdown_timeout_s=_number(env, "HUB_SHUTDOWN_TIMEOUT_S", float, minimum=0),
        jetstream_replicas=int(_number(env, "HUB_JETSTREAM_REPLICAS", int, minimum=1)),
        gateway_host=text("HUB_GATEWAY_HOST"),
        gateway_port=int(_number(env, "HUB_GATEWAY_PORT", int, minimum=0)),
        gateway_tool_budget_s=_number(env, "HUB_GATEWAY_TOOL_BUDGET_S", float, minimum=0.1),
        gateway_thumbnail_max_bytes=int(_number(env, "HUB_GATEWAY_THUMBNAIL_MAX_BYTES", int, minimum=1024)),
        gateway_allowed_hosts=_allowed_hosts(env, "HUB_GATEWAY_ALLOWED_HOSTS"),
        gateway_allowed_origins=_allowed_origins(env, "HUB_GATEWAY_ALLOWED_ORIGINS"),
        ui_host=text("HUB_UI_HOST"),
        ui_port=int(_number(env, "HUB_UI_PORT", int, minimum=0)),
        ui_allowed_hosts=_allowed_hosts(env, "HUB_UI_ALLOWED_HOSTS"),
        ui_allowed_origins=_allowed_origins(env, "HUB_UI_ALLOWED_ORIGINS"),
        admin_password=env.get("HUB_ADMIN_PASSWORD", ""),
        ui_comfyui_probe_url=_probe_url(env, "HUB_UI_COMFYUI_PROBE_URL"),
        ui_signin_free_failures=int(_number(env, "HUB_UI_SIGNIN_FREE_FAILURES", int, minimum=0)),
        ui_signin_delay_s=_number(env, "HUB_UI_SIGNIN_DELAY_S", float, minimum=0),
        ui_signin_lock_failures=int(_number(env, "HUB_UI_SIGNIN_LOCK_FAILURES", int, minimum=1)),
        ui_signin_lock_s=_number(env, "HUB_UI_SIGNIN_LOCK_S", float, minimum=1),
        nats_port=int(_number(env, "HUB_NATS_PORT", int, minimum=0)),
        nats_monitor_port=int(_number(env, "HUB_NATS_MONITOR_PORT", int, minimum=0)),
        layout=_choice(env, "HUB_LAYOUT", ("single", "split")),
        fork_server=_fork_server(env),
        dispatch_strategy=_choice(env, "HUB_DISPATCH_STRATEGY", ("pull", "pull_affinity", "round_robin")),
        dispatch_model_switch_s=_number(env, "HUB_DISPATCH_MODEL_SWITCH_S", float, minimum=0),
        dispatch_fair_share=_choice(env, "HUB_DISPATCH_FAIR_SHARE", ("on", "off")) == "on",
        dispatch_fair_share_window_s=_number(env, "HUB_DISPATCH_FAIR_SHARE_WINDOW_S", float, minimum=1),
        dispatch_health_interval_s=_number(env, "HUB_DISPATCH_HEALTH_INTERVAL_S", float, minimum=0.05),
        dispatch_stall_timeout_s=_number(env, "HUB_DISPATCH_STALL_TIMEOUT_S", float, minimum=0.1),
        dispatch_job_timeout_s=_number(env, "HUB_DISPATCH_JOB_TIMEOUT_S", float, minimum=1),
        dispatch_max_attempts=int(_number(env, "HUB_DISPATCH_MAX_ATTEMPTS", int, minimum=1)),
        dispatch_takeover_s=_number(env, "HUB_DISPATCH_TAKEOVER_S", float, minimum=1),
        test_pause_after_fetch_s=_number(env, "HUB_TEST_PAUSE_AFTER_FETCH_S", float, minimum=0),
        test_pause_before_admit_s=_number(env, "HUB_TEST_PAUSE_BEFORE_ADMIT_S", float, minimum=0),
        input_url_allow=_host_or_network_list(env, "HUB_INPUT_URL_ALLOW"),
        metrics_allow=_network_list(env, "HUB_METRICS_ALLOW"),
        # The standard variable (read again by the OTLP exporter); the traces-only one turns tracing on as well.
        otlp_endpoint=_otlp_endpoint(env),
    )
