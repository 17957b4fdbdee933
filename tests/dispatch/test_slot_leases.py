"""Slot leases shared by dispatcher replicas: a slot is held by one replica at a time, and a replica takes a slot it
freed itself again in one request."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from dispatch_service.leases import LeaseNote, SlotLeases


def _note(replica: str, job: str) -> LeaseNote:
    return LeaseNote(replica=replica, job_id=job, reply="_INBOX.none")


async def test_a_freed_slot_goes_to_one_replica_at_a_time_and_back_in_one_request(nc: NatsClient) -> None:
    first, second = SlotLeases(nc.jetstream(), ttl_s=30), SlotLeases(nc.jetstream(), ttl_s=30)
    await first.open()
    await second.open()
    instance = "lease-test"
    lease = await first.try_take(instance, 1, _note("a", "job-1"))
    assert lease is not None
    assert await second.try_take(instance, 1, _note("b", "job-2")) is None  # held
    await lease.release()
    taken_by_second = await second.try_take(instance, 1, _note("b", "job-2"))
    assert taken_by_second is not None
    assert await first.try_take(instance, 1, _note("a", "job-3")) is None  # its note of the freed slot is stale
    await taken_by_second.release()
    again = await first.try_take(instance, 1, _note("a", "job-3"))  # freed by the other replica: asked plainly
    assert again is not None
    assert await again.refresh()
    await again.release()
    sent = nc.stats["out_msgs"]
    back = await first.try_take(instance, 1, _note("a", "job-4"))  # freed here: taken in one request
    assert back is not None
    assert nc.stats["out_msgs"] - sent == 1
    assert await second.try_take(instance, 1, _note("b", "job-5")) is None
    await back.release()
