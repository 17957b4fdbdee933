"""Every request/reply endpoint of the hub, declared once: its subject, request type, reply type and timeout.

A service answers one with `runtime.endpoint(endpoints.Registry.GET, handler)`, a caller asks it with
`await call(nc, endpoints.Registry.GET, GetRenderType(name=...))`: both take the types from here, so a type
checker sees the reply type at every call site and a handler that does not fit its endpoint.
Subjects that are only published (change announcements, fan-out control messages) stay in `contracts.subjects`.
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

    S = subjects.Registry
    LIST: Final = Endpoint(S.LIST, ListRenderTypes, RenderTypeList, ask_again_s=ASK_AGAIN_S)
    GET: Final = Endpoint(S.GET, GetRenderType, RenderType, ask_again_s=ASK_AGAIN_S)
    SAVE: Final = Endpoint(S.SAVE, SaveRenderType, RenderType)
    DELETE: Final = Endpoint(S.DELETE, DeleteRenderType, DeletedRenderType)
    SET_DEFAULT: Final = Endpoint(S.SET_DEFAULT, SetDefaultRenderType, RenderType)
    HISTORY: Final = Endpoint(S.HISTORY, GetRenderTypeHistory, RenderTypeHistory, ask_again_s=ASK_AGAIN_S)
    ROLLBACK: Final = Endpoint(S.ROLLBACK, RollbackRenderType, RenderType)
    ANALYZE: Final = Endpoint(S.ANALYZE, AnalyzeWorkflow, WorkflowAnalysis)
    RESOLVE: Final = Endpoint(S.RESOLVE, ResolveRenderType, ResolvedWorkflow, ask_again_s=ASK_AGAIN_S)


class Prompt:
    """prompt-service: styles, prompt building and LLM enhancement."""

    S = subjects.Prompt
    STYLES_LIST: Final = Endpoint(S.STYLES_LIST, ListStyles, StyleList, ask_again_s=ASK_AGAIN_S)
    STYLES_GET: Final = Endpoint(S.STYLES_GET, GetStyle, Style, ask_again_s=ASK_AGAIN_S)
    STYLES_SAVE: Final = Endpoint(S.STYLES_SAVE, SaveStyle, Style)
    STYLES_DELETE: Final = Endpoint(S.STYLES_DELETE, DeleteStyle, Empty)
    STYLES_IMPORT: Final = Endpoint(S.STYLES_IMPORT, ImportStyles, ImportReport)
    STYLES_EXPORT: Final = Endpoint(S.STYLES_EXPORT, ExportStyles, StyleExport)
    STYLES_BULK: Final = Endpoint(S.STYLES_BULK, BulkStyles, BulkResult)
    BUILD: Final = Endpoint(S.BUILD, BuildPrompt, BuiltPrompt, ask_again_s=ASK_AGAIN_S)
    # A preview is a build that generates nothing: same styles, same LLM rewrite (the UI shows before/after).
    PREVIEW: Final = Endpoint(S.PREVIEW, BuildPrompt, BuiltPrompt)
    LLM_SETTINGS_GET: Final = Endpoint(S.LLM_SETTINGS_GET, GetLlmSettings, LlmSettings)
    LLM_SETTINGS_SAVE: Final = Endpoint(S.LLM_SETTINGS_SAVE, SaveLlmSettings, LlmSettings)
    LLM_MODELS: Final = Endpoint(S.LLM_MODELS, ListLlmModels, LlmModels)
    LLM_TEST: Final = Endpoint(S.LLM_TEST, TryEnhancement, EnhanceResult)


class Dispatch:
    """dispatch-service: ComfyUI instances, jobs, queue."""

    S = subjects.Dispatch
    INSTANCES_LIST: Final = Endpoint(S.INSTANCES_LIST, ListInstances, InstanceList)
    INSTANCES_GET: Final = Endpoint(S.INSTANCES_GET, GetInstance, InstanceView)
    INSTANCES_SAVE: Final = Endpoint(S.INSTANCES_SAVE, SaveInstance, InstanceView)
    INSTANCES_DELETE: Final = Endpoint(S.INSTANCES_DELETE, DeleteInstance, Empty)
    INSTANCES_TEST: Final = Endpoint(S.INSTANCES_TEST, ProbeInstance, InstanceHealth)
    JOBS_SUBMIT: Final = Endpoint(S.JOBS_SUBMIT, GenerationRequest, SubmitReply)
    JOBS_GET: Final = Endpoint(S.JOBS_GET, GetJob, JobView)
    JOBS_CANCEL: Final = Endpoint(S.JOBS_CANCEL, CancelJob, JobView)
    JOBS_LIST: Final = Endpoint(S.JOBS_LIST, ListJobs, JobPage)
    QUEUE_VIEW: Final = Endpoint(S.QUEUE_VIEW, QueueViewRequest, QueueView)
    SCHEDULING_VIEW: Final = Endpoint(S.SCHEDULING_VIEW, GetSchedulingView, SchedulingView)
    OUTPUTS_DELETE: Final = Endpoint(S.OUTPUTS_DELETE, DeleteOutputs, DeletedOutputs)


class Stats:
    """stats-service: generation log, figures, retention."""

    S = subjects.Stats
    LOG_QUERY: Final = Endpoint(S.LOG_QUERY, QueryLog, LogPage)
    LOG_GET: Final = Endpoint(S.LOG_GET, GetGeneration, GenerationRecord)
    FIGURES: Final = Endpoint(S.FIGURES, QueryFigures, Figures)
    EXPORT: Final = Endpoint(S.EXPORT, ExportLog, LogExport)
    RETENTION_GET: Final = Endpoint(S.RETENTION_GET, GetRetention, RetentionPolicy)
    RETENTION_SAVE: Final = Endpoint(S.RETENTION_SAVE, SaveRetention, RetentionPolicy)
    RETENTION_RUN: Final = Endpoint(S.RETENTION_RUN, RunRetention, RetentionReport)


class Gateway:
    """gateway: MCP and REST front door; owns API keys."""

    S = subjects.Gateway
    KEYS_LIST: Final = Endpoint(S.KEYS_LIST, ListApiKeys, ApiKeyList)
    KEYS_CREATE: Final = Endpoint(S.KEYS_CREATE, CreateApiKey, CreatedApiKey)
    KEYS_REVOKE: Final = Endpoint(S.KEYS_REVOKE, RevokeApiKey, ApiKey)
    KEYS_SET_LIMITS: Final = Endpoint(S.KEYS_SET_LIMITS, SetApiKeyLimits, ApiKey)
    KEYS_DEFAULTS_GET: Final = Endpoint(S.KEYS_DEFAULTS_GET, GetKeyDefaults, KeyDefaults)
    KEYS_DEFAULTS_SET: Final = Endpoint(S.KEYS_DEFAULTS_SET, SetKeyDefaults, KeyDefaults)
    KEYS_WEBHOOKS_SET: Final = Endpoint(S.KEYS_WEBHOOKS_SET, SetKeyWebhooks, KeyWebhooks)
    WEBHOOK_GET: Final = Endpoint(S.WEBHOOK_GET, GetWebhookDelivery, WebhookDeliveryReply)


OWNERS: Final = (Registry, Prompt, Dispatch, Stats, Gateway)


def declared() -> Iterator[Endpoint[msgspec.Struct, object]]:
    """Every endpoint declared above (health endpoints aside: every service has its own)."""
    for owner in OWNERS:
        for value in vars(owner).values():
            if isinstance(value, Endpoint):
                yield value
