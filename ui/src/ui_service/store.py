"""The UI service's storage: the admin account and the sign-in failures (the only module touching its tables).

Rows come back as msgspec Structs (`AccountRecord`, `FailureRecord`); accounts.py and throttle.py hold the rules.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ui_service.tables import AdminAccount, SignInFailures


class AccountRecord(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    password_hash: str
    failed_sign_ins: int = 0
    last_failed_sign_in_at: datetime | None = None
    last_failed_sign_in_from: str = ""


class FailureRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Failed sign-ins in a row of one key (`client:<address>` or `account:<name>`)."""

    key: str
    failures: int
    last_failure_at: datetime
    blocked_until: datetime


def _columns(table: Any, record_type: type[msgspec.Struct]) -> tuple[Any, ...]:
    return tuple(getattr(table, f.name) for f in msgspec.structs.fields(record_type))


ACCOUNT_COLUMNS = _columns(AdminAccount, AccountRecord)
FAILURE_COLUMNS = _columns(SignInFailures, FailureRecord)


# -- the admin account ------------------------------------------------------------------------------------


async def account(username: str) -> AccountRecord | None:
    row = await AdminAccount.select(*ACCOUNT_COLUMNS).where(AdminAccount.username == username).first()
    return None if row is None else msgspec.convert(row, AccountRecord)


async def account_exists(username: str) -> bool:
    return await AdminAccount.exists().where(AdminAccount.username == username)


async def create_account(username: str, password_hash: str, now: datetime) -> None:
    await AdminAccount(username=username, password_hash=password_hash, created_at=now, updated_at=now).save()


async def set_password(username: str, password_hash: str, now: datetime) -> None:
    await AdminAccount.update({AdminAccount.password_hash: password_hash, AdminAccount.updated_at: now}).where(
        AdminAccount.username == username
    )


async def add_failed_sign_in(username: str, client: str, now: datetime) -> None:
    await AdminAccount.update(
        {
            AdminAccount.failed_sign_ins: AdminAccount.failed_sign_ins + 1,
            AdminAccount.last_failed_sign_in_at: now,
            AdminAccount.last_failed_sign_in_from: client[:200],
        }
    ).where(AdminAccount.username == username)


async def subtract_failed_sign_ins(username: str, count: int) -> None:
    """Subtracting (not zeroing) keeps a failure counted meanwhile, e.g. by another replica."""
    await AdminAccount.update({AdminAccount.failed_sign_ins: AdminAccount.failed_sign_ins - count}).where(
        AdminAccount.username == username
    )


# -- sign-in failures ----------------------------------------------------------------------------------------


async def forget_failures_before(before: datetime) -> None:
    """Every key's failures last counted at or before `before` are dropped."""
    await SignInFailures.delete().where(SignInFailures.last_failure_at <= before)


async def failures(keys: list[str]) -> list[FailureRecord]:
    rows = await SignInFailures.select(*FAILURE_COLUMNS).where(SignInFailures.key.is_in(keys))
    return msgspec.convert(rows, list[FailureRecord])


async def save_failure(record: FailureRecord, *, exists: bool) -> None:
    """Insert the key's record, or update it when `exists`."""
    if not exists:
        await SignInFailures(**msgspec.structs.asdict(record)).save()
        return
    await SignInFailures.update(
        {
            SignInFailures.failures: record.failures,
            SignInFailures.last_failure_at: record.last_failure_at,
            SignInFailures.blocked_until: record.blocked_until,
        }
    ).where(SignInFailures.key == record.key)


async def delete_failures(keys: list[str]) -> None:
    await SignInFailures.delete().where(SignInFailures.key.is_in(keys))
