"""NATS transport of the prompt service: each subject mapped to the domain call that answers it."""

from __future__ import annotations

from contracts import endpoints, topics
from contracts.envelope import Empty
from contracts.messages import styles as style_messages
from contracts.runtime.bus import publish
from contracts.runtime.service import ServiceRuntime
from prompt_service import llm_settings, styles
from prompt_service.builder import PromptBuilder
from prompt_service.render_types import check_render_types_exist


async def list_styles(req: style_messages.ListStyles) -> style_messages.StyleList:
    return style_messages.StyleList(styles=await styles.list_styles(req))


async def get_style(req: style_messages.GetStyle) -> style_messages.Style:
    return await styles.get_style(req.name)


async def export_styles(req: style_messages.ExportStyles) -> style_messages.StyleExport:
    return await styles.export_styles(req)


async def get_llm_settings(_req: style_messages.GetLlmSettings) -> style_messages.LlmSettings:
    return llm_settings.masked(await llm_settings.load_llm_settings())


async def save_llm_settings(req: style_messages.SaveLlmSettings) -> style_messages.LlmSettings:
    return llm_settings.masked(await llm_settings.save_llm_settings(req.settings))


class _StyleChanges:
    """The handlers that change the styles: each tells every replica (and the UI) once it is done."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def announce_change(self) -> None:
        await publish(self.runtime.nc, topics.Prompt.STYLES_CHANGED, Empty())

    async def save_style(self, req: style_messages.SaveStyle) -> style_messages.Style:
        await check_render_types_exist(self.runtime.nc, styles.checked(req.style).render_types)
        saved = await styles.save_style(req)
        await self.announce_change()
        return saved

    async def delete_style(self, req: style_messages.DeleteStyle) -> Empty:
        await styles.delete_style(req.name)
        await self.announce_change()
        return Empty()

    async def import_styles(self, req: style_messages.ImportStyles) -> style_messages.ImportReport:
        report = await styles.import_styles(req)
        if not req.dry_run:
            await self.announce_change()
        return report

    async def bulk_styles(self, req: style_messages.BulkStyles) -> style_messages.BulkResult:
        result = await styles.bulk_styles(req)
        await self.announce_change()
        return result


def register(runtime: ServiceRuntime, builder: PromptBuilder) -> None:
    changes = _StyleChanges(runtime)
    runtime.endpoint(endpoints.Prompt.STYLES_LIST, list_styles)
    runtime.endpoint(endpoints.Prompt.STYLES_GET, get_style)
    runtime.endpoint(endpoints.Prompt.STYLES_SAVE, changes.save_style)
    runtime.endpoint(endpoints.Prompt.STYLES_DELETE, changes.delete_style)
    runtime.endpoint(endpoints.Prompt.STYLES_IMPORT, changes.import_styles)
    runtime.endpoint(endpoints.Prompt.STYLES_EXPORT, export_styles)
    runtime.endpoint(endpoints.Prompt.STYLES_BULK, changes.bulk_styles)
    runtime.endpoint(endpoints.Prompt.BUILD, builder.build)
    # A preview is a build that generates nothing: same styles, same LLM rewrite (the UI shows before/after).
    runtime.endpoint(endpoints.Prompt.PREVIEW, builder.build)
    runtime.endpoint(endpoints.Prompt.LLM_SETTINGS_GET, get_llm_settings)
    runtime.endpoint(endpoints.Prompt.LLM_SETTINGS_SAVE, save_llm_settings)
    runtime.endpoint(endpoints.Prompt.LLM_MODELS, builder.models)
    runtime.endpoint(endpoints.Prompt.LLM_TEST, builder.test)
