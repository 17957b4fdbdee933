"""The admin account: salted scrypt password hashes, and creating the account from HUB_ADMIN_PASSWORD."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from ui_service.tables import AdminAccount

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
    account = await AdminAccount.objects().where(AdminAccount.username == ADMIN_USERNAME).first()
    now = datetime.now(UTC)
    if not password:
        return "unchanged" if account else "missing"
    if account is None:
        await AdminAccount(
            username=ADMIN_USERNAME, password_hash=hash_password(password), created_at=now, updated_at=now
        ).save()
        return "created"
    if verify_password(password, account.password_hash):
        return "unchanged"
    account.password_hash = hash_password(password)
    account.updated_at = now
    await account.save()
    return "updated"


async def admin_exists() -> bool:
    return await AdminAccount.exists().where(AdminAccount.username == ADMIN_USERNAME)


async def check_login(username: str, password: str) -> bool:
    account = await AdminAccount.objects().where(AdminAccount.username == username).first()
    if account is None:
        # Same work as a real check, so timing does not tell which usernames exist.
        verify_password(password, hash_password("not-an-account"))
        return False
    return verify_password(password, account.password_hash)
