"""Every NATS subject of the hub, in one place.

Request/reply subjects are answered by a queue group named after the owning service, so any number of
replicas can run. JetStream subjects (jobs, generation events) are listed in `contracts.streams`.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "hub"

SERVICES: Final = ("registry", "prompt", "dispatch", "stats", "gateway", "ui")


def health(service: str) -> str:
    """Answered by one replica of `service` (queue group); `$SRV.PING.<service>` reaches every replica."""
    return f"{PREFIX}.{service}.health"


# Scatter (no queue group, not a micro endpoint): every replica of every service answers with a MetricsReply;
# the gateway's /metrics gathers the answers that come within a short window.
METRICS_SCRAPE: Final = f"{PREFIX}.metrics.scrape"


def queue_group(service: str) -> str:
    return f"{PREFIX}-{service}"


class Registry:
    """registry-service: render types and their ComfyUI workflows."""

    SERVICE: Final = "registry"
    HEALTH: Final = health("registry")
    LIST: Final = "hub.registry.render_types.list"
    GET: Final = "hub.registry.render_types.get"
    SAVE: Final = "hub.registry.render_types.save"
    DELETE: Final = "hub.registry.render_types.delete"
    SET_DEFAULT: Final = "hub.registry.render_types.set_default"
    HISTORY: Final = "hub.registry.render_types.history"
    ROLLBACK: Final = "hub.registry.render_types.rollback"
    ANALYZE: Final = "hub.registry.workflows.analyze"
    RESOLVE: Final = "hub.registry.resolve"
    # Published (no reply) after every change to the render types, so others can drop what they cached.
    CHANGED: Final = "hub.registry.changed"


class Prompt:
    """prompt-service: styles, prompt building and LLM enhancement."""

    SERVICE: Final = "prompt"
    HEALTH: Final = health("prompt")
    STYLES_LIST: Final = "hub.prompt.styles.list"
    STYLES_GET: Final = "hub.prompt.styles.get"
    STYLES_SAVE: Final = "hub.prompt.styles.save"
    STYLES_DELETE: Final = "hub.prompt.styles.delete"
    STYLES_IMPORT: Final = "hub.prompt.styles.import"
    STYLES_EXPORT: Final = "hub.prompt.styles.export"
    STYLES_BULK: Final = "hub.prompt.styles.bulk"
    BUILD: Final = "hub.prompt.build"
    PREVIEW: Final = "hub.prompt.preview"
    LLM_SETTINGS_GET: Final = "hub.prompt.llm.settings.get"
    LLM_SETTINGS_SAVE: Final = "hub.prompt.llm.settings.save"
    LLM_MODELS: Final = "hub.prompt.llm.models"
    LLM_TEST: Final = "hub.prompt.llm.test"
    # Published (no reply) after every change to the styles (save, delete, import), like Registry.CHANGED.
    STYLES_CHANGED: Final = "hub.prompt.styles.changed"


class Dispatch:
    """dispatch-service: ComfyUI instances, jobs, queue."""

    SERVICE: Final = "dispatch"
    HEALTH: Final = health("dispatch")
    INSTANCES_LIST: Final = "hub.dispatch.instances.list"
    INSTANCES_GET: Final = "hub.dispatch.instances.get"
    INSTANCES_SAVE: Final = "hub.dispatch.instances.save"
    INSTANCES_DELETE: Final = "hub.dispatch.instances.delete"
    INSTANCES_TEST: Final = "hub.dispatch.instances.test"
    JOBS_SUBMIT: Final = "hub.dispatch.jobs.submit"
    JOBS_GET: Final = "hub.dispatch.jobs.get"
    JOBS_CANCEL: Final = "hub.dispatch.jobs.cancel"
    JOBS_LIST: Final = "hub.dispatch.jobs.list"
    QUEUE_VIEW: Final = "hub.dispatch.queue.view"
    SCHEDULING_VIEW: Final = "hub.dispatch.scheduling.view"
    OUTPUTS_DELETE: Final = "hub.dispatch.outputs.delete"
    # Fan-out (no queue group): every dispatcher replica hears it; the one running the job interrupts it.
    CONTROL_CANCEL: Final = "hub.dispatch.control.cancel"
    # Fan-out: an instance was added, changed or removed; every replica reloads the pool.
    CONTROL_INSTANCES: Final = "hub.dispatch.control.instances"


class Stats:
    """stats-service: generation log, figures, retention."""

    SERVICE: Final = "stats"
    HEALTH: Final = health("stats")
    LOG_QUERY: Final = "hub.stats.log.query"
    LOG_GET: Final = "hub.stats.log.get"
    FIGURES: Final = "hub.stats.figures"
    EXPORT: Final = "hub.stats.export"
    RETENTION_GET: Final = "hub.stats.retention.get"
    RETENTION_SAVE: Final = "hub.stats.retention.save"
    RETENTION_RUN: Final = "hub.stats.retention.run"


class Gateway:
    """gateway: MCP and REST front door; owns API keys."""

    SERVICE: Final = "gateway"
    HEALTH: Final = health("gateway")
    KEYS_LIST: Final = "hub.gateway.keys.list"
    KEYS_CREATE: Final = "hub.gateway.keys.create"
    KEYS_REVOKE: Final = "hub.gateway.keys.revoke"
    KEYS_SET_LIMITS: Final = "hub.gateway.keys.set_limits"
    KEYS_DEFAULTS_GET: Final = "hub.gateway.keys.defaults.get"
    KEYS_DEFAULTS_SET: Final = "hub.gateway.keys.defaults.set"
    KEYS_WEBHOOKS_SET: Final = "hub.gateway.keys.webhooks.set"
    WEBHOOK_GET: Final = "hub.gateway.webhooks.get"
    # Published (no reply) with a key id after the key changed (revoked, new limits or webhooks): every replica drops
    # what it cached of it.
    KEYS_CHANGED: Final = "hub.gateway.keys.changed"


class Ui:
    SERVICE: Final = "ui"
    HEALTH: Final = health("ui")
