"""The gateway's API keys: list, create (the secret shown once), revoke."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from contracts import endpoints
from contracts.messages.keys import CreateApiKey, ListApiKeys, RevokeApiKey
from ui_service.forms import form_of, limits_from_form
from ui_service.hub_client import HubClient
from ui_service.pages import Rejection, act_then_redirect, named_or, page, require_admin


async def keys_page(request: Request, hub: HubClient, errors: dict | None = None, form: dict | None = None) -> Template:
    listed, error = await hub.try_ask(endpoints.Gateway.KEYS_LIST, ListApiKeys(include_revoked=True))
    # The new secret rides in the session for exactly one page view (post/redirect/get: a reload
    # neither creates a second key nor shows the secret again).
    created = request.session.pop("new_key", None) if request.session else None
    return page(
        "api_keys.html",
        request,
        keys=listed.keys if listed else [],
        load_error=error,
        created=created,
        errors=errors or {},
        form=form or {},
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
