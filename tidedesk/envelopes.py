"""Broker envelopes between chat nodes and routers: one schema, a compact binary encoding.

Two kinds of envelope cross RabbitMQ (or the in-process broker):

- inbound events, chat node → router (``INBOUND_QUEUE``): :data:`InboundEvent`, one
  :class:`msgspec.Struct` per kind (message, opened, close, transfer, agent_status);
- deliveries, router or chat node → the chat node of a recipient (``node_queue(node)``): who it
  is for and the WebSocket frame to send them (:func:`encode_delivery`), or, when several
  recipients of one frame are on the same node, all of them in one envelope
  (:func:`encode_deliveries`, issue 17).

Encoding: one version byte, :data:`BINARY_V1`, then MessagePack of array-like Structs (field
values in declaration order, no key names; the kind is a small integer tag in the first slot).
A delivery for several recipients starts with :data:`BINARY_V2` instead: a node of a version
before it refuses it loudly (logged, counted) rather than showing the frame to the first
recipient only, which is what an extra trailing field of a v1 delivery would have done
(msgspec ignores trailing array slots it does not know). Writing it is switched off by
``TIDEDESK_ENVELOPE_FORMAT=binary-v1`` while such nodes run (docs/envelopes.md). Broker batches
(several envelopes in one AMQP message, ``tidedesk.broker_batches``) are switched off the same
way, by ``binary-v2``.
Decoding checks the schema (types, required fields, allowed values) and raises
:class:`EnvelopeError` naming what is wrong; a consumer logs, counts and drops such a message
rather than redelivering it forever.

Rolling upgrades: the previous version of Tidedesk put plain JSON objects (``{"kind": ...}``
and ``{"to": ..., "frame": ...}``) on the same queues. A JSON object starts with ``{`` (or white
space), never with the version byte, so :func:`decode_inbound` and :func:`decode_delivery` read
both; the JSON form goes through the same schema check. New fields must be added at the end of
a Struct with a default, so an envelope written by an older node still decodes.

Why msgspec and not Protocol Buffers: see ``docs/envelopes.md`` (schema in Python, checked on
decode, no protoc step, and faster than the JSON it replaces).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from tidedesk.frames import (
    AttachmentMeta,
    Frame,
    MessageFrame,
    NonNegative,
    Sender,
    attachments_from_dicts,
    frame_dict,
)

# First byte of every binary envelope. A JSON envelope (older nodes) starts with "{".
BINARY_V1 = b"\x01"
# First byte of a delivery for several recipients on one node (issue 17); nodes before it read
# only BINARY_V1 and JSON, and reject this one as an unknown format.
BINARY_V2 = b"\x02"

Recipient = Annotated[str, msgspec.Meta(pattern=r"^(visitor|agent):.+")]
# MessageFrame, the key-less message delivery, is defined once with the other client frames
# (tidedesk.frames); this module uses it as part of the delivery schema.


class EnvelopeError(ValueError):
    """An envelope that does not follow the schema; the message says what is wrong."""


class _Event(msgspec.Struct, array_like=True, frozen=True, tag_field="kind"):
    KIND: ClassVar[str]


class MessageEvent(_Event, tag=1, frozen=True):
    """A chat message with its seq, handed to the routers once (ts: ingest time, unix s)."""

    KIND: ClassVar[str] = "message"
    conversation_id: str
    visitor_id: str
    seq: NonNegative
    id: str
    from_: Sender = msgspec.field(name="from")
    sender_id: str
    name: str
    body: str
    ts: float
    private: bool = False
    attachments: tuple[AttachmentMeta, ...] = ()  # issue 15


class OpenedEvent(_Event, tag=2, frozen=True):
    KIND: ClassVar[str] = "opened"
    conversation_id: str
    visitor_id: str
    tags: tuple[str, ...] = ()


class CloseEvent(_Event, tag=3, frozen=True):
    KIND: ClassVar[str] = "close"
    conversation_id: str
    by: str = ""


class TransferEvent(_Event, tag=4, frozen=True):
    KIND: ClassVar[str] = "transfer"
    conversation_id: str
    by: str = ""
    to_agent: str | None = None
    to_pool: str | None = None

    def __post_init__(self) -> None:  # on decode, msgspec turns this into a ValidationError
        if (self.to_agent is None) == (self.to_pool is None):
            raise ValueError("a transfer names exactly one of to_agent and to_pool")


class AgentStatusEvent(_Event, tag=5, frozen=True):
    KIND: ClassVar[str] = "agent_status"
    agent_id: str
    status: Literal["online", "away", "offline"]
    pools: tuple[str, ...] = ()
    max_chats: NonNegative = 3
    name: str = ""
    # issue 13: the agent signed out or chose `offline`: their chats are given back at once
    # (a console that only went away keeps them for TIDEDESK_AGENT_GRACE_S).
    give_back: bool = False


InboundEvent = MessageEvent | OpenedEvent | CloseEvent | TransferEvent | AgentStatusEvent
EVENT_TYPES: dict[str, type[_Event]] = {
    cls.KIND: cls for cls in (MessageEvent, OpenedEvent, CloseEvent, TransferEvent,
                              AgentStatusEvent)}


class _Delivery(msgspec.Struct, array_like=True, frozen=True):
    to: Recipient
    # Any other frame (state, queue, assigned, typing ...) travels as a MessagePack map.
    frame: MessageFrame | dict[str, Any]


class _GroupDelivery(msgspec.Struct, array_like=True, frozen=True):
    """Binary v2: one frame for several recipients connected to the same node."""

    to: Annotated[tuple[Recipient, ...], msgspec.Meta(min_length=1)]
    frame: MessageFrame | dict[str, Any]


_MESSAGE_FRAME_REQUIRED = frozenset({"type", "conversation_id", "seq", "id", "from", "body",
                                     "ts"})
_MESSAGE_FRAME_KEYS = _MESSAGE_FRAME_REQUIRED | {"name", "private", "attachments"}

_encoder = msgspec.msgpack.Encoder()
_inbound_decoder = msgspec.msgpack.Decoder(InboundEvent)
_delivery_decoder = msgspec.msgpack.Decoder(_Delivery)
_group_decoder = msgspec.msgpack.Decoder(_GroupDelivery)


def _is_json(body: bytes) -> bool:
    return body.lstrip()[:1] == b"{"


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EnvelopeError("a JSON envelope must be an object")
    return data


def _field_path(message: str, cls: type[msgspec.Struct] | None, offset: int) -> str:
    """msgspec names array slots (`$[3]`); say which field that is."""
    match = re.search(r"`\$\[(\d+)\]", message)
    if cls is None or match is None:
        return message
    fields = msgspec.structs.fields(cls)
    index = int(match.group(1)) - offset
    if not 0 <= index < len(fields):
        return message
    return message[:match.start()] + f"`{fields[index].encode_name}`" + \
        message[match.end() + 1:]


def _binary_event_type(payload: bytes) -> type[_Event] | None:
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError:
        return None
    if isinstance(raw, list) and raw:
        for cls in EVENT_TYPES.values():
            if cls.__struct_config__.tag == raw[0]:
                return cls
    return None


def _wrong_format(body: bytes, delivery: bool = False) -> EnvelopeError:
    v2 = f", {BINARY_V2!r} (binary v2)" if delivery else ""
    return EnvelopeError(f"unknown envelope format (first byte {body[:1]!r}); expected "
                         f"{BINARY_V1!r} (binary v1){v2} or a JSON object")


@functools.cache
def _slots(cls: type[msgspec.Struct]) -> tuple[tuple[str, str, bool, Callable[[], Any]], ...]:
    """(key, attribute, required, default) of each field of an array-like Struct, in wire
    order (msgspec.structs.fields is slow: tens of microseconds a call)."""
    out = []
    for f in msgspec.structs.fields(cls):
        default: Callable[[], Any] = (f.default_factory if f.default is msgspec.NODEFAULT
                                      else functools.partial(lambda v: v, f.default))
        out.append((f.encode_name, f.name, f.required, default))
    return tuple(out)


# -- inbound events --------------------------------------------------------------------------
def event_from_mapping(data: Mapping[str, Any]) -> InboundEvent:
    """The event a JSON-style mapping describes (``{"kind": "message", ...}``), checked against
    the schema; raises :class:`EnvelopeError`. Unknown keys are ignored (newer senders)."""
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EnvelopeError(f"unknown event kind {kind!r}; expected one of "
                            f"{', '.join(EVENT_TYPES)}")
    values: list[Any] = [cls.__struct_config__.tag]
    for key, _, required, default in _slots(cls):
        if key in data:
            values.append(data[key])
        elif required:
            raise EnvelopeError(f"{kind} event without {key!r}")
        else:
            values.append(default())
    try:
        event: InboundEvent = msgspec.convert(values, type=cls)  # type: ignore[assignment]
    except msgspec.ValidationError as exc:
        raise EnvelopeError(f"{kind} event: {_field_path(str(exc), cls, 1)}") from None
    return event


def event_to_mapping(event: InboundEvent) -> dict[str, Any]:
    """The JSON-style mapping of an event (what older nodes sent; used for logs and tests)."""
    out: dict[str, Any] = {"kind": event.KIND}
    for key, attr, _, _ in _slots(type(event)):
        value = getattr(event, attr)
        # As JSON has it: tuples as lists, attachment Structs as their arrays.
        out[key] = msgspec.to_builtins(value) if isinstance(value, tuple) else value
    return out


def encode_inbound(event: InboundEvent) -> bytes:
    return BINARY_V1 + _encoder.encode(event)


def encode_inbound_json(event: InboundEvent) -> bytes:
    """The envelope as the previous version wrote it (JSON); for upgrade tests and benchmarks."""
    return json.dumps(event_to_mapping(event), ensure_ascii=False).encode()


def decode_inbound(body: bytes) -> InboundEvent:
    """Binary v1 or legacy JSON → a schema-checked event; :class:`EnvelopeError` otherwise."""
    if body[:1] == BINARY_V1:
        try:
            event: InboundEvent = _inbound_decoder.decode(body[1:])
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            cls = _binary_event_type(body[1:])
            kind = cls.KIND if cls is not None else "inbound"
            raise EnvelopeError(f"binary {kind} event: {_field_path(str(exc), cls, 1)}"
                                ) from None
        return event
    if _is_json(body):
        return event_from_mapping(_load_json(body))
    raise _wrong_format(body)


def inbound_encoder(envelope_format: str) -> Callable[[InboundEvent], bytes]:
    """The inbound encoder for ``TIDEDESK_ENVELOPE_FORMAT`` (``binary`` and
    ``binary-v1`` both write inbound events as binary v1, ``json`` as JSON)."""
    return encode_inbound_json if envelope_format == "json" else encode_inbound


# -- deliveries ------------------------------------------------------------------------------
def _frame_body(frame: Frame | dict[str, Any]) -> MessageFrame | dict[str, Any]:
    """Message frames go as a key-less :class:`MessageFrame`; any other frame as a map (its
    keys are few and short)."""
    if isinstance(frame, MessageFrame):
        return frame
    if not isinstance(frame, dict):
        frame = frame_dict(frame)
    if (frame.get("type") == "message"
            and _MESSAGE_FRAME_REQUIRED <= frame.keys() <= _MESSAGE_FRAME_KEYS):
        return MessageFrame(frame["conversation_id"], frame["seq"], frame["id"], frame["from"],
                            frame["body"], frame["ts"], frame.get("name", ""),
                            frame.get("private", False),
                            attachments_from_dicts(frame.get("attachments", ())))
    return frame


def encode_delivery(who: str, frame: Frame | dict[str, Any]) -> bytes:
    """``frame`` for ``who`` (``visitor:<id>`` / ``agent:<id>``), binary v1."""
    return BINARY_V1 + _encoder.encode(_Delivery(who, _frame_body(frame)))


def encode_deliveries(whos: Sequence[str], frame: Frame | dict[str, Any]) -> bytes:
    """``frame`` for every one of ``whos`` (recipients on one node): binary v2, or v1 when
    there is only one (what every node since binary envelopes reads)."""
    if len(whos) == 1:
        return encode_delivery(whos[0], frame)
    return BINARY_V2 + _encoder.encode(_GroupDelivery(tuple(whos), _frame_body(frame)))


def encode_delivery_json(who: str, frame: Frame | dict[str, Any]) -> bytes:
    """A delivery as the previous version wrote it (JSON)."""
    if not isinstance(frame, dict):
        frame = frame_dict(frame)
    return json.dumps({"to": who, "frame": frame}, ensure_ascii=False).encode()


def delivery_encoder(envelope_format: str) -> Callable[[str, Frame | dict[str, Any]], bytes]:
    """The one-recipient delivery encoder for ``TIDEDESK_ENVELOPE_FORMAT``."""
    return encode_delivery_json if envelope_format == "json" else encode_delivery


def groups_deliveries(envelope_format: str) -> bool:
    """Whether a node writing ``envelope_format`` puts the recipients of one frame on one node
    into one envelope (binary v2); ``binary-v1`` and ``json`` write one per recipient, for
    nodes of a version before it (docs/envelopes.md)."""
    return envelope_format in ("binary", "binary-v2")


def batches_publishes(envelope_format: str) -> bool:
    """Whether a node writing ``envelope_format`` sends the envelopes it publishes to one queue
    in one pass of its event loop as one broker batch (``tidedesk.broker_batches``, issue 17);
    ``binary-v2`` and older formats send each alone, for nodes of a version before batches."""
    return envelope_format == "binary"


def decode_deliveries(body: bytes) -> tuple[tuple[str, ...], dict[str, Any]]:
    """(recipients, frame) of a delivery: binary v2 (several recipients), binary v1 or legacy
    JSON (one); :class:`EnvelopeError` when a recipient or the frame does not follow the
    schema."""
    head = body[:1]
    delivery: _Delivery | _GroupDelivery
    if head == BINARY_V1:
        try:
            delivery = _delivery_decoder.decode(body[1:])
        except msgspec.DecodeError as exc:
            raise EnvelopeError(f"binary delivery: {exc}") from None
    elif head == BINARY_V2:
        try:
            delivery = _group_decoder.decode(body[1:])
        except msgspec.DecodeError as exc:
            raise EnvelopeError(f"binary v2 delivery: {exc}") from None
    elif _is_json(body):
        data = _load_json(body)
        try:
            delivery = msgspec.convert([data.get("to"), data.get("frame")], type=_Delivery)
        except msgspec.ValidationError as exc:
            raise EnvelopeError(f"JSON delivery: {exc}") from None
    else:
        raise _wrong_format(body, delivery=True)
    whos = delivery.to if isinstance(delivery, _GroupDelivery) else (delivery.to,)
    frame = delivery.frame
    if isinstance(frame, MessageFrame):
        return whos, frame.to_dict()
    if not isinstance(frame.get("type"), str):
        raise EnvelopeError("delivery frame without a string 'type'")
    return whos, frame


def decode_delivery(body: bytes) -> tuple[str, dict[str, Any]]:
    """(who, frame) of a one-recipient delivery (binary v1 or legacy JSON); see
    :func:`decode_deliveries`."""
    whos, frame = decode_deliveries(body)
    if len(whos) != 1:
        raise EnvelopeError(f"a delivery for {len(whos)} recipients; use decode_deliveries")
    return whos[0], frame
