"""Signing the admin in and out."""

from __future__ import annotations

import asyncio
import secrets
import time

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from ui_service import accounts
from ui_service.pages import SESSION_KEY, page, safe_next
from ui_service.sessions import NEW_SESSION_ID, SESSION_COOKIE


class AuthController(Controller):
    path = "/"

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
    async def login(self, request: Request) -> Template | Redirect:
        form = await request.form()
        username = str(form.get("username", "")).strip() or accounts.ADMIN_USERNAME
        if await accounts.check_login(username, str(form.get("password", ""))):
            await start_session(request, username)
            return Redirect(safe_next(request.query_params.get("next")))
        await asyncio.sleep(0.3)  # slows guessing
        return page(
            "login.html",
            request,
            error="Wrong user name or password.",
            has_admin=True,
            next=safe_next(request.query_params.get("next")),
        )

    @post("/logout")
    async def logout(self, request: Request) -> Redirect:
        request.clear_session()
        return Redirect("/login")


async def start_session(request: Request, username: str) -> None:
    """A fresh session id on sign-in (no session fixation); whatever the old id held is dropped."""
    if old_id := request.cookies.get(SESSION_COOKIE):
        await request.app.stores.get("sessions").delete(old_id)
    request.scope[NEW_SESSION_ID] = secrets.token_hex(32)  # type: ignore[literal-required]
    request.set_session({SESSION_KEY: username, "signed_in_at": time.time()})
