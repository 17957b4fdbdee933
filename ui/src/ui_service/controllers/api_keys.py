"""The gateway's API keys: list, create (the secret shown once), revoke, their limits (each key's, and the
defaults a new key's form starts from) and their webhook URLs."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from contracts import endpoints
from contracts.errors import HubError
from contracts.messages.keys import (
    CreateApiKey,
    GetKeyDefaults,
    KeyLimits,
    ListApiKeys,
    RevokeApiKey,
    SetApiKeyLimits,
    SetKeyDefaults,
    SetKeyWebhooks,
)
from ui_service.forms import form_of, limits_form, limits_from_form, lines
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, act_then_redirect, field_of, flash, named_or, page, require_admin


def limit_box(error: HubError) -> str:
    """The limit's box an error names; any other error (no such key, the gateway away) shows above the form."""
    box = field_of(error)
    return box if box in KeyLimits.__struct_fields__ else "form"


async def keys_page(request: Request, hub: HubClient, errors: dict | None = None, form: dict | None = None) -> Template:
    listed, error = await hub.try_ask(endpoints.Gateway.KEYS_LIST, ListApiKeys(include_revoked=True))
    if form is None:  # a new key's form starts from the defaults for new keys
        defaults, _ = await hub.try_ask(endpoints.Gateway.KEYS_DEFAULTS_GET, GetKeyDefaults())
        form = limits_form(defaults.limits if defaults else KeyLimits())
    # The new secret rides in the session for exactly one page view (post/redirect/get: a reload
    # neither creates a second key nor shows the secret again).
    created = request.session.pop("new_key", None) if request.session else None
    new_webhook_secret = request.session.pop("new_webhook_secret", None) if request.session else None
    return page(
        "api_keys.html",
        request,
        keys=listed.keys if listed else [],
        load_error=error,
        created=created,
        new_webhook_secret=new_webhook_secret,
        errors=errors or {},
        form=form,
    )


async def limits_page(
    request: Request, hub: HubClient, key_id: str, errors: dict | None = None, form: dict | None = None
) -> Template:
    """One key's limits, or (key_id "") the defaults for new keys."""
    key, load_error = None, None
    if key_id:
        listed, load_error = await hub.try_ask(endpoints.Gateway.KEYS_LIST, ListApiKeys(include_revoked=True))
        key = next((k for k in listed.keys if k.key_id == key_id), None) if listed else None
        if listed and key is None:
            load_error = f"There is no API key {key_id}."
        limits = key.limits if key else KeyLimits()
    else:
        defaults, load_error = await hub.try_ask(endpoints.Gateway.KEYS_DEFAULTS_GET, GetKeyDefaults())
        limits = defaults.limits if defaults else KeyLimits()
    return page(
        "api_key_limits.html",
        request,
        key=key,
        key_id=key_id,
        load_error=load_error,
        errors=errors or {},
        form=form if form is not None else limits_form(limits),
    )


class ApiKeysController(Controller):
    path = "/api-keys"
    guards = [require_admin]

    @get("/")
    async def api_keys(self, request: Request, hub: HubClient) -> Template:
        return await keys_page(request, hub)

    @post("/")
    async def create_api_key(self, request: Request, hub: HubClient) -> Template | Redirect:
        data = await request.form()
        form = await form_of(request, "scopes")
        name = form.get("name", "").strip()
        scopes = [str(v) for v in data.getall("scopes")] if "scopes" in data else []  # checkboxes (SCOPES)
        with Rejection(named_or("name")) as rejected:
            create = CreateApiKey(name=name, scopes=scopes, limits=limits_from_form(form))
            created = await hub.ask(endpoints.Gateway.KEYS_CREATE, create)
        if rejected:
            return await keys_page(request, hub, errors=rejected.errors, form={**form, "name": name, "scopes": scopes})
        request.session["new_key"] = {
            "name": created.key.name,
            "secret": created.secret,
            "webhook_secret": created.webhook_secret,
        }
        return Redirect("/api-keys")

    @post("/revoke")
    async def revoke_api_key(self, request: Request, hub: HubClient) -> Redirect:
        key_id = (await form_of(request)).get("key_id", "")
        with Rejection() as rejected:
            revoked = await hub.ask(endpoints.Gateway.KEYS_REVOKE, RevokeApiKey(key_id=key_id))
        return act_then_redirect(request, "/api-keys", rejected, "" if rejected else f"Revoked the key {revoked.name}.")

    @post("/webhooks")
    async def set_key_webhooks(self, request: Request, hub: HubClient) -> Redirect:
        form = await form_of(request)
        urls = lines(form.get("webhook_urls", ""))
        setting = SetKeyWebhooks(key_id=form.get("key_id", ""), urls=urls, progress="webhook_progress" in form)
        with Rejection() as rejected:
            saved = await hub.ask(endpoints.Gateway.KEYS_WEBHOOKS_SET, setting)
        if rejected:
            return act_then_redirect(request, "/api-keys", rejected, "")
        if saved.webhook_secret:  # the key's first signing secret (a key made before webhooks): shown this once
            request.session["new_webhook_secret"] = {"name": saved.key.name, "secret": saved.webhook_secret}
        done = f"{saved.key.name}: {len(urls)} webhook URL{'s' if len(urls) != 1 else ''} set." if urls else ""
        return act_then_redirect(request, "/api-keys", rejected, done or f"{saved.key.name}: webhooks stopped.")

    @get("/defaults")
    async def defaults(self, request: Request, hub: HubClient) -> Template:
        return await limits_page(request, hub, "")

    @post("/defaults")
    async def save_defaults(self, request: Request, hub: HubClient) -> Template | Redirect:
        form = await form_of(request)
        with Rejection(limit_box) as rejected:
            await hub.ask(endpoints.Gateway.KEYS_DEFAULTS_SET, SetKeyDefaults(limits=limits_from_form(form)))
        if rejected:
            return await limits_page(request, hub, "", errors=rejected.errors, form=form)
        flash(request, "Saved the limits new keys start with.")
        return Redirect("/api-keys")

    @get("/{key_id:str}/limits")
    async def key_limits(self, request: Request, hub: HubClient, key_id: str) -> Template:
        return await limits_page(request, hub, key_id)

    @post("/{key_id:str}/limits")
    async def save_key_limits(self, request: Request, hub: HubClient, key_id: str) -> Template | Redirect:
        form = await form_of(request)
        with Rejection(limit_box) as rejected:
            change = SetApiKeyLimits(key_id=key_id, limits=limits_from_form(form))
            key = await hub.ask(endpoints.Gateway.KEYS_SET_LIMITS, change)
        if rejected:
            return await limits_page(request, hub, key_id, errors=rejected.errors, form=form)
        flash(request, f"Saved the limits of the key {key.name}; they hold from its next request.")
        return Redirect("/api-keys")
