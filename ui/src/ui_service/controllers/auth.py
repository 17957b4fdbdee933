"""Signing the admin in and out, with failed sign-ins delayed, then locked (ui_service.throttle)."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.response import Redirect, Template

from ui_service import accounts, throttle
from ui_service.hub_client import HubClient
from ui_service.pages import SESSION_KEY, flash, page, safe_next
from ui_service.sessions import NEW_SESSION_ID, SESSION_COOKIE
from ui_service.throttle import ThrottlePolicy


def provide_policy(state: State) -> ThrottlePolicy:
    return ThrottlePolicy.from_settings(state.hub.runtime.settings)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class AuthController(Controller):
    path = "/"
    dependencies = {"policy": Provide(provide_policy, sync_to_thread=False)}

    @get("/login")
    async def login_page(self, request: Request) -> Template:
        return page(
            "login.html",
            request,
            error="",
            has_admin=await accounts.admin_exists(),
            next=safe_next(request.query_params.get("next")),
        )

    @post("/login")
    async def login(self, request: Request, hub: HubClient, policy: ThrottlePolicy) -> Template | Redirect:
        form = await request.form()
        username = str(form.get("username", "")).strip() or accounts.ADMIN_USERNAME
        client = client_address(request)
        if refusal := await throttle.admit(client, username, policy):
            hub.log.warning("sign-in refused", client=client, username=username, **msgspec.structs.asdict(refusal))
            return login_again(request, refusal.message(), status_code=429, retry_after_s=refusal.retry_after_s)
        if await accounts.check_login(username, str(form.get("password", ""))):
            await signed_in(request, hub, client, username)
            return Redirect(safe_next(request.query_params.get("next")))
        await sign_in_failed(hub, client, username, policy)
        await asyncio.sleep(0.3)  # slows guessing
        return login_again(request, "Wrong user name or password.")

    @post("/logout")
    async def logout(self, request: Request) -> Redirect:
        request.clear_session()
        return Redirect("/login")


def login_again(request: Request, error: str, status_code: int = 200, retry_after_s: int | None = None) -> Template:
    return page(
        "login.html",
        request,
        status_code=status_code,
        headers={"Retry-After": str(retry_after_s)} if retry_after_s is not None else None,
        error=error,
        has_admin=True,
        next=safe_next(request.query_params.get("next")),
    )


async def sign_in_failed(hub: HubClient, client: str, username: str, policy: ThrottlePolicy) -> None:
    """A wrong password: logged, and told to the admin at the next sign-in (the failure is already counted)."""
    await accounts.note_failed_sign_in(username, client, datetime.now(UTC))
    failures = await throttle.failures_of(client, username)
    hub.log.warning("sign-in failed", client=client, username=username, failures=failures)
    locked = {by: count for by, count in failures.items() if count >= policy.lock_failures}
    if locked:
        hub.log.warning("sign-in locked", client=client, username=username, locked=locked, lock_s=policy.lock_s)


async def signed_in(request: Request, hub: HubClient, client: str, username: str) -> None:
    await throttle.forget(client, username)
    missed = await accounts.take_missed_sign_ins(username)
    hub.log.info("signed in", client=client, username=username, failed_since_last=missed.count if missed else 0)
    await start_session(request, username)
    if missed:
        flash(request, missed.notice(), "error")


async def start_session(request: Request, username: str) -> None:
    """A fresh session id on sign-in (no session fixation); whatever the old id held is dropped."""
    if old_id := request.cookies.get(SESSION_COOKIE):
        await request.app.stores.get("sessions").delete(old_id)
    # litestar types the ASGI scope as a TypedDict; this private key is read back by RotatingSessionBackend.
    request.scope[NEW_SESSION_ID] = secrets.token_hex(32)  # type: ignore[literal-required]
    request.set_session({SESSION_KEY: username, "signed_in_at": time.time()})
