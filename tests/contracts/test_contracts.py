"""Every message of the contracts survives a JSON round trip, and errors name the field at fault."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import typing
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness import MODULES
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

import contracts.messages as messages
from contracts import endpoints, subjects, topics
from contracts.envelope import Empty, Reply
from contracts.errors import ErrorCode, ErrorInfo, HubError, error_from_validation
from contracts.messages.base import Record, Request
from contracts.messages.events import EVENT_VERSION, GenerationEvent, JobProgress
from contracts.messages.jobs import GenerationRequest
from contracts.messages.styles import BuiltPrompt
from contracts.streams import event_subject, is_job_id

MESSAGE_MODULES = [
    importlib.import_module(f"contracts.messages.{module.name}") for module in pkgutil.iter_modules(messages.__path__)
]
ALL_STRUCTS = sorted(
    (
        obj
        for module in MESSAGE_MODULES
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == module.__name__
        and obj not in (Record, Request)
        and not name.startswith("_")
    ),
    key=lambda cls: cls.__name__,
)


def sample_of(info: msgspec.inspect.Type, depth: int = 0) -> Any:
    """A valid, non-trivial value of any contract type, built from msgspec's view of that type.

    Every optional field gets a value too, so a field that does not round-trip cannot hide behind None.
    """
    i = msgspec.inspect
    if isinstance(info, i.Metadata):
        return sample_of(info.type, depth)
    if isinstance(info, i.StructType):
        value = {}
        for field in info.fields:
            value[field.encode_name] = sample_of(field.type, depth + 1)
        if info.tag_field is not None:
            value[info.tag_field] = info.tag
        return value
    if isinstance(info, i.UnionType):
        options = [t for t in info.types if not isinstance(t, i.NoneType)]
        return sample_of(options[0], depth)
    if isinstance(info, i.LiteralType):
        return info.values[-1]
    if isinstance(info, i.EnumType):
        return next(iter(info.cls)).value
    if isinstance(info, i.StrType):
        if info.pattern:
            return "sample-1" if "a-z" in info.pattern else "Sample 1"
        return "sample text"
    if isinstance(info, i.BoolType):
        return True
    if isinstance(info, i.IntType):
        return max(info.ge or 0, min(7, info.le if info.le is not None else 7))
    if isinstance(info, i.FloatType):
        return 1.5
    if isinstance(info, (i.ListType, i.TupleType, i.VarTupleType, i.FrozenSetType, i.SetType)):
        return [sample_of(info.item_type, depth + 1)] if hasattr(info, "item_type") else []
    if isinstance(info, i.DictType):
        key = sample_of(info.key_type, depth + 1)
        return {key: sample_of(info.value_type, depth + 1)}
    if isinstance(info, i.AnyType):
        return {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
    if isinstance(info, i.NoneType):
        return None
    raise AssertionError(f"no sample for {info!r}")


def test_the_contracts_define_every_boundary_known_today() -> None:
    names = {cls.__name__ for cls in ALL_STRUCTS}
    for expected in (
        "Style", "BuildPrompt", "RenderType", "ResolveRenderType", "Instance", "GenerationRequest",
        "JobView", "JobAccepted", "JobCompleted", "QueryLog", "QueryFigures", "HealthReply", "CreateApiKey",
    ):  # fmt: skip
        assert expected in names
    assert len(ALL_STRUCTS) > 80


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=lambda cls: cls.__name__)
def test_every_message_round_trips_through_json(cls: type[msgspec.Struct]) -> None:
    raw = sample_of(msgspec.inspect.type_info(cls))
    value = msgspec.convert(raw, type=cls)
    wire = msgspec.json.encode(value)
    again = msgspec.json.decode(wire, type=cls)
    assert again == value
    # Every field was given a value, so a field the wire loses shows up as None (or a default) here.
    assert msgspec.to_builtins(again) == msgspec.to_builtins(value)
    for field in msgspec.structs.fields(cls):
        assert getattr(again, field.name) is not None, f"{cls.__name__}.{field.name} did not survive"


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=lambda cls: cls.__name__)
def test_every_message_has_a_json_schema(cls: type[msgspec.Struct]) -> None:
    """The gateway publishes these schemas (MCP inputSchema/outputSchema, OpenAPI)."""
    schema = msgspec.json.schema(cls)
    assert schema["$defs"][cls.__name__]["type"] == "object"


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=lambda cls: cls.__name__)
def test_every_message_fits_in_a_reply_envelope(cls: type[msgspec.Struct]) -> None:
    value = msgspec.convert(sample_of(msgspec.inspect.type_info(cls)), type=cls)
    wire = msgspec.json.encode(Reply(result=value))
    assert msgspec.json.decode(wire, type=Reply[cls]).unwrap() == value


def test_events_are_a_tagged_union_with_a_version() -> None:
    kinds = typing.get_args(GenerationEvent)
    assert {k.__struct_config__.tag for k in kinds} >= {
        "accepted", "queued", "started", "progress", "output_stored", "completed", "failed", "cancelled",
    }  # fmt: skip
    for kind in kinds:
        event = msgspec.convert(sample_of(msgspec.inspect.type_info(kind)), type=kind)
        decoded = msgspec.json.decode(msgspec.json.encode(event), type=GenerationEvent)
        assert type(decoded) is kind
        assert decoded == event
        assert decoded.version == EVENT_VERSION or decoded.version == event.version
        assert decoded.event_id == f"{event.job_id}:{event.seq}"


def test_an_event_from_a_newer_sender_with_extra_fields_still_decodes() -> None:
    wire = b'{"kind":"progress","version":2,"job_id":"j1","seq":4,"at":1.0,"value":3,"max":9,"eta_s":12}'
    event = msgspec.json.decode(wire, type=GenerationEvent)
    assert isinstance(event, JobProgress)
    assert (event.version, event.value, event.max) == (2, 3, 9)


def test_the_error_envelope_round_trips_and_unwraps_into_hub_error() -> None:
    info = ErrorInfo(
        code=ErrorCode.INCOMPATIBLE,
        message="style 'anime' does not suit render type 'upscale'",
        field="styles",
        details={"valid": ["photo", "none"]},
    )
    wire = msgspec.json.encode(Reply[BuiltPrompt](error=info))
    assert msgspec.json.decode(wire) == {
        "error": {
            "code": "incompatible",
            "message": "style 'anime' does not suit render type 'upscale'",
            "field": "styles",
            "details": {"valid": ["photo", "none"]},
        }
    }
    reply = msgspec.json.decode(wire, type=Reply[BuiltPrompt])
    with pytest.raises(HubError) as raised:
        reply.unwrap()
    assert raised.value.info == info
    assert raised.value.code is ErrorCode.INCOMPATIBLE


def test_a_reply_with_neither_result_nor_error_is_an_internal_error() -> None:
    with pytest.raises(HubError) as raised:
        Reply[Empty]().unwrap()
    assert raised.value.code is ErrorCode.INTERNAL


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"prompt": "a cat", "width": "wide"}', "width", "Expected `int"),
        (b'{"prompt": "a cat", "width": 12}', "width", ">= 64"),
        (b'{"prompt": "a cat", "widht": 512}', "widht", "accepted fields are"),
        (b'{"prompt": 3}', "prompt", "Expected `str`"),
        (b'{"prompt": "a cat", "input_image": {"urll": "x"}}', "input_image.urll", "unknown field"),
        (b'{"prompt": "a cat", "styles": ["ok", 3]}', "styles[1]", "Expected `str`"),
        (b'{"prompt": "a cat", "job_id": "a.*"}', "job_id", "letters, digits, `_` or `-`"),
        (b'{"prompt": "a cat", "job_id": ">"}', "job_id", "letters, digits, `_` or `-`"),
    ],
)
def test_validation_errors_name_the_field_and_the_fix(body: bytes, field: str, words: str) -> None:
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(body, type=GenerationRequest)
    info = error_from_validation(raised.value, endpoints.Dispatch.JOBS_SUBMIT.subject, GenerationRequest)
    assert info.code is ErrorCode.INVALID_REQUEST
    assert info.field == field
    assert words in info.message


@pytest.mark.parametrize("job_id", ["*", ">", "a.b", "a b", "", "x" * 129])
def test_an_event_subject_is_made_only_of_a_job_id(job_id: str) -> None:
    # A wildcard or a dot would widen the one job's subject to other jobs' events.
    assert not is_job_id(job_id)
    with pytest.raises(ValueError, match="not a job id"):
        event_subject(job_id)


def test_the_hubs_own_job_ids_make_event_subjects() -> None:
    for job_id in (uuid.uuid4().hex, "overhead-3-1764800000", "A_b-9"):
        assert is_job_id(job_id)
        assert event_subject(job_id) == f"hub.events.generation.{job_id}"


def test_malformed_json_is_reported_as_such() -> None:
    with pytest.raises(msgspec.DecodeError) as raised:
        msgspec.json.decode(b"{nope", type=GenerationRequest)
    info = error_from_validation(raised.value, endpoints.Dispatch.JOBS_SUBMIT.subject)
    assert info.field is None
    assert "not valid JSON" in info.message


def test_each_endpoint_is_declared_once_with_its_types_under_its_service_subject() -> None:
    declared = list(endpoints.declared())
    assert len({e.subject for e in declared}) == len(declared)
    for owner in endpoints.OWNERS:
        for attr, endpoint in vars(owner).items():
            if not isinstance(endpoint, endpoints.Endpoint):
                continue
            assert endpoint.service == owner.__name__.lower(), (attr, endpoint.subject)
            assert issubclass(endpoint.request, msgspec.Struct) and issubclass(endpoint.reply, msgspec.Struct)
            assert endpoint.metadata() == {"request": endpoint.request.__name__, "reply": endpoint.reply.__name__}
            assert endpoint.timeout_s > 0


async def service_infos(nc: NatsClient, wait_s: float = 1.0) -> list[dict[str, Any]]:
    """What every running service replica tells `$SRV.INFO` (nats.micro discovery): its endpoints."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(msg: Msg) -> None:
        replies.append(msgspec.json.decode(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish("$SRV.INFO", b"", reply=inbox)
    await asyncio.sleep(wait_s)
    await sub.unsubscribe()
    return replies


async def test_every_endpoint_has_one_handler_in_its_service_and_info_names_its_types(
    start_service, nc: NatsClient, tmp_path: Path
) -> None:
    processes = [start_service(service, data_dir=tmp_path / "data") for service in MODULES]
    await asyncio.gather(*(process.wait_healthy(nc, timeout_s=60) for process in processes))
    answered: dict[str, list[str]] = {}
    documented: dict[str, dict[str, str] | None] = {}
    for info in await service_infos(nc):
        for endpoint in info["endpoints"]:
            answered.setdefault(endpoint["subject"], []).append(info["name"])
            documented[endpoint["subject"]] = endpoint.get("metadata")
    expected = {e.subject: e for e in endpoints.declared()} | {
        endpoints.health(service).subject: endpoints.health(service) for service in MODULES
    }
    assert set(answered) - set(expected) == set(), "answered, but not declared in contracts.endpoints"
    assert set(expected) - set(answered) == set(), "declared, but no service answers"
    for subject, endpoint in expected.items():
        assert answered[subject] == [f"hub-{endpoint.service}"], subject  # one handler, in its own service
        assert documented[subject] == endpoint.metadata(), subject


def test_subjects_are_unique_and_owned_by_their_service() -> None:
    """Endpoints, topics and health subjects together: none is used twice, each lies under its service's name."""
    owners = (*endpoints.OWNERS, topics.Registry, topics.Prompt, topics.Gateway, topics.Dispatch)
    named = [
        (owner.__name__.lower(), f"{owner.__module__}.{owner.__name__}.{attr}", value.subject)
        for owner in owners
        for attr, value in vars(owner).items()
        if isinstance(value, endpoints.Endpoint | topics.Topic)
    ]
    named += [(service, f"health({service!r})", subjects.health(service)) for service in subjects.SERVICES]
    seen: dict[str, str] = {}
    for service, name, subject in named:
        assert subject.startswith(f"hub.{service}."), (name, subject)
        assert subject not in seen, f"{subject} used by {seen.get(subject)} and {name}"
        seen[subject] = name


def test_every_read_is_asked_again_while_unanswered() -> None:
    """A read held by a replica that dies (or a request routed to one in the instant it dies, before nats-server
    drops its subscriptions) is asked again of the replicas alive (`call`), not waited for until its timeout."""
    reads = ("get", "list", "view", "query", "history")
    unasked = [e.subject for e in endpoints.declared() if e.subject.rsplit(".", 1)[1] in reads and not e.ask_again_s]
    assert not unasked, f"declare these reads with ask_again_s=ASK_AGAIN_S: {unasked}"


@pytest.mark.parametrize("name", ["portrait xl", "", "porträt", "x" * 65])
def test_a_name_against_its_rule_is_told_the_rule_in_words(name: str) -> None:
    from contracts.messages.render_types import RenderType, SaveRenderType

    body = msgspec.json.encode({"render_type": {"name": name}})
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(body, type=SaveRenderType)
    info = error_from_validation(raised.value, endpoints.Registry.SAVE.subject, SaveRenderType)
    assert info.field == "render_type.name"
    assert "regex" not in info.message
    rule = msgspec.inspect.type_info(RenderType).fields[0].type.extra_json_schema["description"]
    assert info.message == f"invalid value for `render_type.name`: {rule}"
