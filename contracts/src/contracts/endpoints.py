"""Every request/reply endpoint of the hub, declared once: its subject, request type, reply type and timeout.

A service answers one with `runtime.endpoint(endpoints.Registry.GET, handler)`, a caller asks it with
`await call(nc, endpoints.Registry.GET, GetRenderType(name=...))`: both take the types from here, so a type
checker sees the reply type at every call site and a handler that does not fit its endpoint.
Subjects that are only published (change announcements, fan-out control messages) are in `contracts.topics`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import msgspec

from contracts import subjects
from contracts.envelope import Empty
from contracts.messages.health import HealthReply, HealthRequest
from contracts.messages.instances import (
    DeleteInstance,
    GetInstance,
    InstanceHealth,
    InstanceList,
    InstanceView,
    ListInstances,
    ProbeInstance,
    SaveInstance,
)
from contracts.messages.jobs import (
    CancelJob,
    DeletedOutputs,
    DeleteOutputs,
    GenerationRequest,
    GetJob,
    GetSchedulingView,
    JobPage,
    JobView,
    ListJobs,
    QueueView,
    QueueViewRequest,
    SchedulingView,
    SubmitReply,
)
from contracts.messages.keys import (
    ApiKey,
    ApiKeyList,
    CreateApiKey,
    CreatedApiKey,
    GetKeyDefaults,
    GetWebhookDelivery,
    KeyDefaults,
    KeyWebhooks,
    ListApiKeys,
    RevokeApiKey,
    SetApiKeyLimits,
    SetKeyDefaults,
    SetKeyWebhooks,
    WebhookDeliveryReply,
)
from contracts.messages.render_types import (
    AnalyzeWorkflow,
    DeletedRenderType,
    DeleteRenderType,
    GetRenderType,
    GetRenderTypeHistory,
    ListRenderTypes,
    RenderType,
    RenderTypeHistory,
    RenderTypeList,
    ResolvedWorkflow,
    ResolveRenderType,
    RollbackRenderType,
    SaveRenderType,
    SetDefaultRenderType,
    WorkflowAnalysis,
)
from contracts.messages.stats import (
    ExportLog,
    Figures,
    GenerationRecord,
    GetGeneration,
    GetRetention,
    LogExport,
    LogPage,
    QueryFigures,
    QueryLog,
    RetentionPolicy,
    RetentionReport,
    RunRetention,
    SaveRetention,
)
from contracts.messages.styles import (
    BuildPrompt,
    BuiltPrompt,
    BulkResult,
    BulkStyles,
    DeleteStyle,
    EnhanceResult,
    ExportStyles,
    GetLlmSettings,
    GetStyle,
    ImportReport,
    ImportStyles,
    ListLlmModels,
    ListStyles,
    LlmModels,
    LlmSettings,
    SaveLlmSettings,
    SaveStyle,
    Style,
    StyleExport,
    StyleList,
    TryEnhancement,
)

Req = TypeVar("Req", bound=msgspec.Struct)
Res = TypeVar("Res")

DEFAULT_TIMEOUT_S: Final = 10.0
# An idempotent read unanswered this long is asked again (its replica may have died holding it; see `call`).
ASK_AGAIN_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[Req, Res]):
    """One request/reply subject: `request` is what the service decodes, `reply` what the caller gets back."""

    subject: str
    request: type[Req]
    reply: type[Res]
    timeout_s: float = DEFAULT_TIMEOUT_S
    # Idempotent (a read: asking twice does no harm): unanswered after this, asked again, within `timeout_s`.
    ask_again_s: float | None = None

    @property
    def service(self) -> str:
        """The service that answers it (`hub.<service>.…`)."""
        return self.subject.split(".")[1]

    def metadata(self) -> dict[str, str]:
        """What `$SRV.INFO` tells about the endpoint besides its subject: the message types it speaks."""
        return {"request": self.request.__name__, "reply": self.reply.__name__}


def health(service: str) -> Endpoint[HealthRequest, HealthReply]:
    """Every service answers it (see ServiceRuntime); one replica replies, `$SRV.PING` reaches all."""
    return Endpoint(subjects.health(service), HealthRequest, HealthReply)


class Registry:
    """registry-service: render types and their ComfyUI workflows."""

    LIST: Final = Endpoint("hub.registry.render_types.list", ListRenderTypes, RenderTypeList, ask_again_s=ASK_AGAIN_S)
    GET: Final = Endpoint("hub.registry.render_types.get", GetRenderType, RenderType, ask_again_s=ASK_AGAIN_S)
    SAVE: Final = Endpoint("hub.registry.render_types.save", SaveRenderType, RenderType)
    DELETE: Final = Endpoint("hub.registry.render_types.delete", DeleteRenderType, DeletedRenderType)
    SET_DEFAULT: Final = Endpoint("hub.registry.render_types.set_default", SetDefaultRenderType, RenderType)
    HISTORY: Final = Endpoint(
        "hub.registry.render_types.history", GetRenderTypeHistory, RenderTypeHistory, ask_again_s=ASK_AGAIN_S
    )
    ROLLBACK: Final = Endpoint("hub.registry.render_types.rollback", RollbackRenderType, RenderType)
    ANALYZE: Final = Endpoint("hub.registry.workflows.analyze", AnalyzeWorkflow, WorkflowAnalysis)
    RESOLVE: Final = Endpoint("hub.registry.resolve", ResolveRenderType, ResolvedWorkflow, ask_again_s=ASK_AGAIN_S)


class Prompt:
    """prompt-service: styles, prompt building and LLM enhancement."""

    STYLES_LIST: Final = Endpoint("hub.prompt.styles.list", ListStyles, StyleList, ask_again_s=ASK_AGAIN_S)
    STYLES_GET: Final = Endpoint("hub.prompt.styles.get", GetStyle, Style, ask_again_s=ASK_AGAIN_S)
    STYLES_SAVE: Final = Endpoint("hub.prompt.styles.save", SaveStyle, Style)
    STYLES_DELETE: Final = Endpoint("hub.prompt.styles.delete", DeleteStyle, Empty)
    STYLES_IMPORT: Final = Endpoint("hub.prompt.styles.import", ImportStyles, ImportReport)
    STYLES_EXPORT: Final = Endpoint("hub.prompt.styles.export", ExportStyles, StyleExport)
    STYLES_BULK: Final = Endpoint("hub.prompt.styles.bulk", BulkStyles, BulkResult)
    BUILD: Final = Endpoint("hub.prompt.build", BuildPrompt, BuiltPrompt, ask_again_s=ASK_AGAIN_S)
    # A preview is a build that generates nothing: same styles, same LLM rewrite (the UI shows before/after).
    PREVIEW: Final = Endpoint("hub.prompt.preview", BuildPrompt, BuiltPrompt)
    LLM_SETTINGS_GET: Final = Endpoint(
        "hub.prompt.llm.settings.get", GetLlmSettings, LlmSettings, ask_again_s=ASK_AGAIN_S
    )
    LLM_SETTINGS_SAVE: Final = Endpoint("hub.prompt.llm.settings.save", SaveLlmSettings, LlmSettings)
    LLM_MODELS: Final = Endpoint("hub.prompt.llm.models", ListLlmModels, LlmModels)
    LLM_TEST: Final = Endpoint("hub.prompt.llm.test", TryEnhancement, EnhanceResult)


class Dispatch:
    """dispatch-service: ComfyUI instances, jobs, queue."""

    INSTANCES_LIST: Final = Endpoint(
        "hub.dispatch.instances.list", ListInstances, InstanceList, ask_again_s=ASK_AGAIN_S
    )
    INSTANCES_GET: Final = Endpoint("hub.dispatch.instances.get", GetInstance, InstanceView, ask_again_s=ASK_AGAIN_S)
    INSTANCES_SAVE: Final = Endpoint("hub.dispatch.instances.save", SaveInstance, InstanceView)
    INSTANCES_DELETE: Final = Endpoint("hub.dispatch.instances.delete", DeleteInstance, Empty)
    INSTANCES_TEST: Final = Endpoint("hub.dispatch.instances.test", ProbeInstance, InstanceHealth)
    JOBS_SUBMIT: Final = Endpoint("hub.dispatch.jobs.submit", GenerationRequest, SubmitReply)
    JOBS_GET: Final = Endpoint("hub.dispatch.jobs.get", GetJob, JobView, ask_again_s=ASK_AGAIN_S)
    JOBS_CANCEL: Final = Endpoint("hub.dispatch.jobs.cancel", CancelJob, JobView)
    JOBS_LIST: Final = Endpoint("hub.dispatch.jobs.list", ListJobs, JobPage, ask_again_s=ASK_AGAIN_S)
    QUEUE_VIEW: Final = Endpoint("hub.dispatch.queue.view", QueueViewRequest, QueueView, ask_again_s=ASK_AGAIN_S)
    SCHEDULING_VIEW: Final = Endpoint(
        "hub.dispatch.scheduling.view", GetSchedulingView, SchedulingView, ask_again_s=ASK_AGAIN_S
    )
    OUTPUTS_DELETE: Final = Endpoint("hub.dispatch.outputs.delete", DeleteOutputs, DeletedOutputs)


class Stats:
    """stats-service: generation log, figures, retention."""

    LOG_QUERY: Final = Endpoint("hub.stats.log.query", QueryLog, LogPage, ask_again_s=ASK_AGAIN_S)
    LOG_GET: Final = Endpoint("hub.stats.log.get", GetGeneration, GenerationRecord, ask_again_s=ASK_AGAIN_S)
    FIGURES: Final = Endpoint("hub.stats.figures", QueryFigures, Figures)
    EXPORT: Final = Endpoint("hub.stats.export", ExportLog, LogExport)
    RETENTION_GET: Final = Endpoint("hub.stats.retention.get", GetRetention, RetentionPolicy, ask_again_s=ASK_AGAIN_S)
    RETENTION_SAVE: Final = Endpoint("hub.stats.retention.save", SaveRetention, RetentionPolicy)
    RETENTION_RUN: Final = Endpoint("hub.stats.retention.run", RunRetention, RetentionReport)


class Gateway:
    """gateway: MCP and REST front door; owns API keys."""

    KEYS_LIST: Final = Endpoint("hub.gateway.keys.list", ListApiKeys, ApiKeyList, ask_again_s=ASK_AGAIN_S)
    KEYS_CREATE: Final = Endpoint("hub.gateway.keys.create", CreateApiKey, CreatedApiKey)
    KEYS_REVOKE: Final = Endpoint("hub.gateway.keys.revoke", RevokeApiKey, ApiKey)
    KEYS_SET_LIMITS: Final = Endpoint("hub.gateway.keys.set_limits", SetApiKeyLimits, ApiKey)
    KEYS_DEFAULTS_GET: Final = Endpoint(
        "hub.gateway.keys.defaults.get", GetKeyDefaults, KeyDefaults, ask_again_s=ASK_AGAIN_S
    )
    KEYS_DEFAULTS_SET: Final = Endpoint("hub.gateway.keys.defaults.set", SetKeyDefaults, KeyDefaults)
    KEYS_WEBHOOKS_SET: Final = Endpoint("hub.gateway.keys.webhooks.set", SetKeyWebhooks, KeyWebhooks)
    WEBHOOK_GET: Final = Endpoint(
        "hub.gateway.webhooks.get", GetWebhookDelivery, WebhookDeliveryReply, ask_again_s=ASK_AGAIN_S
    )


OWNERS: Final = (Registry, Prompt, Dispatch, Stats, Gateway)


def declared() -> Iterator[Endpoint[msgspec.Struct, object]]:
    """Every endpoint declared above (health endpoints aside: every service has its own)."""
    for owner in OWNERS:
        for value in vars(owner).values():
            if isinstance(value, Endpoint):
                yield value
