"""Slowing password guessing at the admin sign-in: per client address and per user name, after a few failures
in a row each further attempt waits (the wait doubling), after many the address or name is locked for a while;
an attempt during a wait or a lock is refused without looking at the password, so the right password from a
locked client waits like any other attempt. The failures live in the UI's database: replicas and restarts agree.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import msgspec

from contracts.runtime.config import Settings
from ui_service import store
from ui_service.store import FailureRecord

# One sign-in decision at a time in this process: a burst of parallel guesses sees each failure counted before
# the next is allowed (the database orders the replicas; at worst one slips through per replica).
_deciding = asyncio.Lock()


class ThrottlePolicy(msgspec.Struct, frozen=True, kw_only=True):
    free_failures: int
    delay_s: float
    lock_failures: int
    lock_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ThrottlePolicy:
        return cls(
            free_failures=settings.ui_signin_free_failures,
            delay_s=settings.ui_signin_delay_s,
            lock_failures=settings.ui_signin_lock_failures,
            lock_s=settings.ui_signin_lock_s,
        )

    def wait_after(self, failures: int) -> float:
        """Seconds the next attempt waits after `failures` failures in a row."""
        if failures >= self.lock_failures:
            return self.lock_s
        if failures >= self.free_failures:
            return min(self.delay_s * 2 ** (failures - self.free_failures), self.lock_s)
        return 0.0


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """Why an attempt is refused before its password is checked, and for how long."""

    retry_after_s: int
    locked: bool
    by: str  # "client" or "account"
    failures: int

    def message(self) -> str:
        whom = "this address" if self.by == "client" else "this user name"
        wait = f"{self.retry_after_s} second{'s' if self.retry_after_s != 1 else ''}"
        if self.locked:
            return f"Sign-in is locked for {whom} after {self.failures} failed attempts. Try again in {wait}."
        return f"Too many failed sign-ins for {whom}. Wait {wait} before the next attempt."


def keys_of(client: str, username: str) -> list[str]:
    return [f"client:{client}"[:300], f"account:{username}"[:300]]


async def admit(client: str, username: str, policy: ThrottlePolicy, now: datetime | None = None) -> Refusal | None:
    """Refuse the attempt while its client or user name waits or is locked; otherwise count it as a failure
    before the password is checked (`forget` clears it when the password is right)."""
    now = now or datetime.now(UTC)
    keys = keys_of(client, username)
    async with _deciding:
        rows = {row.key: row for row in await current_rows(keys, now, policy)}
        # The longest wait decides; on a tie the client's (keys list it first; max keeps the first).
        blocked = [rows[key] for key in keys if key in rows and rows[key].blocked_until > now]
        if blocked:
            row = max(blocked, key=lambda row: row.blocked_until)
            return Refusal(
                retry_after_s=max(1, math.ceil((row.blocked_until - now).total_seconds())),
                locked=row.failures >= policy.lock_failures,
                by=row.key.split(":", 1)[0],
                failures=row.failures,
            )
        for key in keys:
            await count_failure(rows.get(key), key, now, policy)
    return None


async def current_rows(keys: list[str], now: datetime, policy: ThrottlePolicy) -> list[FailureRecord]:
    """The keys' failures in a row. Failures older than the lock are forgotten, every key's (a guesser trying
    many user names leaves no rows behind)."""
    await store.forget_failures_before(now - timedelta(seconds=policy.lock_s))
    return await store.failures(keys)


async def count_failure(row: FailureRecord | None, key: str, now: datetime, policy: ThrottlePolicy) -> None:
    failures = (row.failures if row else 0) + 1
    blocked_until = now + timedelta(seconds=policy.wait_after(failures))
    record = FailureRecord(key=key, failures=failures, last_failure_at=now, blocked_until=blocked_until)
    await store.save_failure(record, exists=row is not None)


async def failures_of(client: str, username: str) -> dict[str, int]:
    """The failures in a row counted for the attempt's client and user name (for the log)."""
    records = await store.failures(keys_of(client, username))
    return {record.key.split(":", 1)[0]: record.failures for record in records}


async def forget(client: str, username: str) -> None:
    """A right password: the client and the user name start again from no failure."""
    await store.delete_failures(keys_of(client, username))
