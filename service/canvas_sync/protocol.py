"""The WebSocket protocol without I/O: parse and validate client frames, encode replies.

Everything a client can get wrong is caught here, before any state is touched, and
raised as a :class:`ProtocolError` carrying the contract's error code. Encoding is
canonical (sorted keys, no spaces) so that two replicas holding the same state produce
byte-for-byte equal JSON.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from .model import Stamp

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
PROP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_PROPS = 64
MAX_TYPE_CHARS = 32
MAX_REQ_CHARS = 64
MAX_DEPTH = 4
MAX_PRESENCE_BYTES = 1024
RESERVED = ("id", "type")
V1 = "canvas-sync.v1"
"""The subprotocol of one server message per frame (also what a client names beside a token)."""
V2 = "canvas-sync.v2"
"""The same messages, but a frame may hold several: a JSON array of them, in order."""
V3 = "canvas-sync.v3"
"""V2, plus ``{"op":"saved","seq":n}`` once this socket's changes up to ``n`` are in the table."""
BATCHED = (V2, V3)
MAX_STAMP_CHARS = 160
STAMP_RE = re.compile(r"(0|[1-9][0-9]{0,15})\.(0|[1-9][0-9]{0,9})\.([^\x00-\x1f]{1,128})")
"""``ms.counter.replica``: a clock stamp as an ``ack`` names it (replica ids may hold dots)."""


def subprotocol(offered: list[str]) -> str | None:
    """The newest subprotocol the client offers; None keeps a plain socket (one message a frame)."""
    return next((version for version in (V3, V2, V1) if version in offered), None)


def stamp_text(stamp: Stamp) -> str:
    return f"{stamp[0]}.{stamp[1]}.{stamp[2]}"


def parse_stamp(value: object, req: str | None) -> Stamp:
    """A stamp a client sends back (replay); ``bad_message`` when it is not one of ours."""
    match = STAMP_RE.fullmatch(value) if isinstance(value, str) and len(value) <= MAX_STAMP_CHARS else None
    if match is None:
        raise ProtocolError("bad_message", "'stamp' must be a stamp from an earlier ack", req)
    return int(match[1]), int(match[2]), match[3]


class ProtocolError(Exception):
    """A refused message: ``code`` is one of the contract's error codes."""

    def __init__(self, code: str, message: str, req: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req = req


@dataclass(frozen=True, slots=True)
class Create:
    req: str | None
    id: str
    type: str
    props: dict[str, Any]
    stamp: Stamp | None = None
    """Set on a replay: the stamp an earlier ``ack`` gave this change."""
    retry: bool = False
    """Sent again without an ack (the socket died): an id already live is no conflict."""


@dataclass(frozen=True, slots=True)
class Update:
    req: str | None
    id: str
    props: dict[str, Any]
    """Properties to set; ``None`` removes one; the key ``type`` changes the type."""
    stamp: Stamp | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    req: str | None
    id: str
    stamp: Stamp | None = None
    retry: bool = False
    """Sent again without an ack (the socket died): an object already gone is no error."""


@dataclass(frozen=True, slots=True)
class Ping:
    req: str | None


@dataclass(frozen=True, slots=True)
class SetPresence:
    """The sender's ephemeral presence (the wire calls it ``state``)."""

    req: str | None
    presence: dict[str, Any]
    """Free-form (cursor, selection, name, colour); its JSON at most MAX_PRESENCE_BYTES."""
    presence_json: str


@dataclass(frozen=True, slots=True)
class Auth:
    """A renewed token for the open socket (same subject)."""

    req: str | None
    token: str


Command = Create | Update | Delete | Ping | SetPresence | Auth


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(message: Any) -> str:
    """Canonical JSON: sorted keys, compact, UTF-8 kept as is; a function of the value alone.

    orjson writes it in a tenth of the standard library's time. It refuses integers past
    64 bits, which the standard library writes instead (so the same value always takes
    the same path and gives the same bytes, on every replica).
    """
    try:
        return orjson.dumps(message, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return _ENCODER.encode(message)


def is_valid_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is not a finite number")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_EXACT_BELOW = 2.0**63
"""orjson reads an integer literal past 64 bits as a float; one this large may be such a case."""


class _Inexact(Exception):
    """A value orjson may have rounded: read the message again with the standard library."""


def loads(text: str | bytes, exact: bool = False) -> Any:
    """JSON with finite numbers only (no NaN, Infinity or overflow).

    orjson reads a message in a fifth of the standard library's time, and refuses what
    the standard library refuses here except integers past 64 bits, which it reads as
    floats; ``exact`` (or orjson's refusal) reads with the standard library, which keeps
    them exact. :func:`parse` asks for that when it meets a float of 2**63 or more.
    """
    if isinstance(text, bytes):
        text = text.decode()
    if not exact:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _DECODER.decode(text)


def _depth(value: Any, exact: bool, room: int = MAX_DEPTH + 1) -> int:
    """How deep ``value`` nests, looking ``room`` levels down at most (enough to refuse it).

    Raises :class:`_Inexact` on a float orjson may have rounded, unless ``exact``.
    """
    kind = type(value)
    if kind is dict or kind is list:
        if not room:
            return 1
        children = value.values() if kind is dict else value
        return 1 + max((_depth(v, exact, room - 1) for v in children), default=0)
    if kind is float and not exact and abs(value) >= _EXACT_BELOW:
        raise _Inexact
    return 0


def check_type(value: Any, req: str | None) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TYPE_CHARS:
        raise ProtocolError(
            "bad_message", f"'type' must be a non-empty string of at most {MAX_TYPE_CHARS} characters", req
        )
    return sys.intern(value)


_NAMES: set[str] = set()
"""Property names already checked (interned, so each is held once); bounded by MAX_NAMES."""
MAX_NAMES = 65536


def _prop_name(name: str, req: str | None) -> str:
    if name in _NAMES:
        return name
    if not PROP_RE.fullmatch(name):
        raise ProtocolError("bad_message", f"bad property name {name!r}: must match {PROP_RE.pattern}", req)
    name = sys.intern(name)
    if len(_NAMES) < MAX_NAMES:
        _NAMES.add(name)
    return name


def check_props(props: dict[str, Any], req: str | None, allow_null: bool, exact: bool = True) -> dict[str, Any]:
    """The properties with checked, interned names; values are finite already (``loads``)."""
    out = {}
    for name, value in props.items():
        name = _prop_name(name, req)
        kind = type(value)
        if value is None:
            if not allow_null:
                raise ProtocolError("bad_message", f"property {name!r}: null is only allowed in an update", req)
        elif kind is dict or kind is list:
            if _depth(value, exact) > MAX_DEPTH:
                raise ProtocolError("bad_message", f"property {name!r}: nested deeper than {MAX_DEPTH}", req)
        elif kind is float and not exact and abs(value) >= _EXACT_BELOW:
            raise _Inexact
        out[name] = value
    return out


def object_size(view: dict[str, Any]) -> int:
    """Bytes of an object's canonical JSON: what ``CANVAS_MAX_OBJECT_BYTES`` limits."""
    return len(encode(view).encode())


def _object_id(message: dict[str, Any], key: str, req: str | None) -> str:
    value = message.get(key)
    if not is_valid_id(value):
        raise ProtocolError("bad_message", f"{key!r} must match {ID_RE.pattern}", req)
    return value


def _utf8_safe(message: Any) -> bool:
    try:
        encode(message).encode()
    except UnicodeEncodeError:
        return False
    return True


def _stamp(message: dict[str, Any], req: str | None) -> Stamp | None:
    raw = message.get("stamp")
    return None if raw is None else parse_stamp(raw, req)


def _retry(message: dict[str, Any], req: str | None) -> bool:
    raw = message.get("retry", False)
    if type(raw) is not bool:
        raise ProtocolError("bad_message", "'retry' must be true or false", req)
    return raw


def parse(text: str, max_object_bytes: int) -> Command:
    """Turn one text frame into a command, or raise :class:`ProtocolError`."""
    try:
        return _parse(text, max_object_bytes, exact=False)
    except _Inexact:
        return _parse(text, max_object_bytes, exact=True)


def _parse(text: str, max_object_bytes: int, exact: bool) -> Command:
    try:
        message = loads(text, exact)
    except (ValueError, RecursionError) as error:
        raise ProtocolError("bad_json", f"not valid JSON: {error}") from None
    if "\\u" in text and not _utf8_safe(message):
        raise ProtocolError(
            "bad_json", "not valid JSON: a \\u escape spells a lone surrogate, which UTF-8 cannot carry"
        )
    if type(message) is not dict:
        raise ProtocolError("bad_message", "a message must be a JSON object")
    req = message.get("req")
    if req is not None and (type(req) is not str or len(req) > MAX_REQ_CHARS):
        raise ProtocolError("bad_message", f"'req' must be a string of at most {MAX_REQ_CHARS} characters")
    op = message.get("op")
    if op == "update":
        object_id = _object_id(message, "id", req)
        changes = message.get("props")
        if type(changes) is not dict or not changes:
            raise ProtocolError("bad_message", "'props' must be a non-empty JSON object", req)
        if "id" in changes:
            raise ProtocolError("bad_message", "'id' cannot be changed", req)
        if "type" in changes:
            type_ = check_type(changes.pop("type"), req)
            props = check_props(changes, req, allow_null=True, exact=exact)
            props["type"] = type_
        else:
            props = check_props(changes, req, allow_null=True, exact=exact)
        return Update(req, object_id, props, _stamp(message, req))
    if op == "ping":
        return Ping(req)
    if op == "create":
        obj = message.get("object")
        if type(obj) is not dict:
            raise ProtocolError("bad_message", "'object' must be a JSON object", req)
        object_id = _object_id(obj, "id", req)
        type_ = check_type(obj.get("type"), req)
        props = {k: v for k, v in obj.items() if k not in RESERVED}
        if len(props) > MAX_PROPS:
            raise ProtocolError("bad_message", f"at most {MAX_PROPS} properties besides id and type", req)
        props = check_props(props, req, allow_null=False, exact=exact)
        if object_size(obj) > max_object_bytes:
            raise ProtocolError("too_large", f"object is larger than {max_object_bytes} bytes", req)
        return Create(req, object_id, type_, props, _stamp(message, req), _retry(message, req))
    if op == "delete":
        return Delete(req, _object_id(message, "id", req), _stamp(message, req), _retry(message, req))
    if op == "presence":
        presence = message.get("state")
        if type(presence) is not dict:
            raise ProtocolError("bad_message", "'state' must be a JSON object", req)
        presence_json = encode(presence)
        if not exact and "e+" in presence_json:  # a float of 1e16 or more: orjson may have rounded it
            raise _Inexact
        if len(presence_json.encode()) > MAX_PRESENCE_BYTES:
            raise ProtocolError("too_large", f"a presence state is at most {MAX_PRESENCE_BYTES} bytes of JSON", req)
        return SetPresence(req, presence, presence_json)
    if op == "auth":
        token = message.get("token")
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise ProtocolError("bad_message", "'token' must be a JWT string", req)
        return Auth(req, token)
    raise ProtocolError(
        "bad_message", f"unknown op {op!r}: expected create, update, delete, ping, presence or auth", req
    )


def ack(req: str | None) -> str:
    return f'{{"op":"ack","req":{_ENCODER.encode(req)}}}' if req is not None else '{"op":"ack"}'


def change_ack(req: str | None, stamp: Stamp, seq: int) -> str:
    """The ack of an accepted create, update or delete: the stamp it was given and its place."""
    named = f',"req":{_ENCODER.encode(req)}' if req is not None else ""
    return f'{{"op":"ack"{named},"seq":{seq},"stamp":{_ENCODER.encode(stamp_text(stamp))}}}'


def saved(seq: int) -> str:
    return f'{{"op":"saved","seq":{seq}}}'


def error(err: ProtocolError) -> str:
    body = {"op": "error", "code": err.code, "message": err.message}
    if err.req is not None:
        body["req"] = err.req
    return encode(body)


def pong(req: str | None) -> str:
    return f'{{"op":"pong","req":{_ENCODER.encode(req)}}}' if req is not None else '{"op":"pong"}'


def upsert(object_json: str) -> str:
    """``object_json`` is the object's canonical JSON, encoded once and shared by all sends."""
    return f'{{"object":{object_json},"op":"upsert"}}'


def deleted(object_id: str) -> str:
    return encode({"op": "delete", "id": object_id})


def snapshot(project: str, replica: str, object_jsons: list[str], presence: list[dict[str, Any]] | None = None) -> str:
    objects = ",".join(object_jsons)
    present = encode(presence or [])
    return (
        f'{{"objects":[{objects}],"op":"snapshot","presence":{present},'
        f'"project":{encode(project)},"replica":{encode(replica)}}}'
    )


def presence(client: str, presence_json: str, sub: str | None = None) -> str:
    """Another client's presence; ``presence_json`` is its canonical JSON, encoded once."""
    who = f',"sub":{encode(sub)}' if sub is not None else ""
    return f'{{"client":{encode(client)},"op":"presence","state":{presence_json}{who}}}'


def presence_leave(client: str) -> str:
    return f'{{"client":{encode(client)},"op":"presence_leave"}}'
