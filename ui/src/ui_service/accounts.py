"""The admin account: salted scrypt password hashes, creating the account from HUB_ADMIN_PASSWORD, and the
failed sign-ins the admin is told about at the next sign-in."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

import msgspec

from ui_service import store

ADMIN_USERNAME = "admin"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
    )
    return hmac.compare_digest(candidate.hex(), digest)


async def ensure_admin(password: str) -> str:
    """Create the admin on first start; a changed HUB_ADMIN_PASSWORD resets it (the operator's way back in).

    Returns what happened, for the log: "created", "updated", "unchanged" or "missing" (no password set).
    """
    account = await store.account(ADMIN_USERNAME)
    now = datetime.now(UTC)
    if not password:
        return "unchanged" if account else "missing"
    if account is None:
        await store.create_account(ADMIN_USERNAME, hash_password(password), now)
        return "created"
    if verify_password(password, account.password_hash):
        return "unchanged"
    await store.set_password(ADMIN_USERNAME, hash_password(password), now)
    return "updated"


async def admin_exists() -> bool:
    return await store.account_exists(ADMIN_USERNAME)


async def check_login(username: str, password: str) -> bool:
    account = await store.account(username)
    if account is None:
        # Same work as a real check, so timing does not tell which usernames exist.
        verify_password(password, hash_password("not-an-account"))
        return False
    return verify_password(password, account.password_hash)


class MissedSignIns(msgspec.Struct, frozen=True, kw_only=True):
    """Wrong passwords given for the account since its last sign-in, for the admin to see at the next one."""

    count: int
    last_at: datetime | None
    last_from: str

    def notice(self) -> str:
        plural = "s" if self.count != 1 else ""
        last = ""
        if self.last_at:
            last = f" (the last at {self.last_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC from {self.last_from})"
        return f"{self.count} failed sign-in{plural} since your last visit{last}."


async def note_failed_sign_in(username: str, client: str, now: datetime) -> None:
    await store.add_failed_sign_in(username, client, now)


async def take_missed_sign_ins(username: str) -> MissedSignIns | None:
    """The failed sign-ins since the account's last sign-in (None if there were none), counting from zero again."""
    account = await store.account(username)
    if account is None or not account.failed_sign_ins:
        return None
    # Subtracting what was read keeps a failure counted meanwhile (by another replica) for the next visit.
    await store.subtract_failed_sign_ins(username, account.failed_sign_ins)
    return MissedSignIns(
        count=account.failed_sign_ins,
        last_at=account.last_failed_sign_in_at,
        last_from=account.last_failed_sign_in_from,
    )
