"""The relay's decisions, without I/O: channel names, the wire format, and sequence tracking.

Pub/sub loses messages silently (a Redis restart, an output-buffer overflow, a half-open
socket), so every object message carries its publisher's replica id, a boot epoch and a
sequence number per project, and every publisher sends a heartbeat with its last
sequence per project. A receiver that sees a gap, a new epoch, or a heartbeat ahead of
what it received asks for a catch-up of that project (from DynamoDB, and from the
unsaved states of the replicas holding it). Duplicates and reordering are harmless: the
merge is idempotent and commutative.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CHANNEL_PREFIX = "canvas:"
HEARTBEAT_CHANNEL = "canvas:heartbeat"
MAX_MESSAGE_BYTES = 256 * 1024
"""A state larger than this travels as a notice to catch up from the table instead."""


def channel(project: str) -> str:
    """One channel per project; the braces are a hash tag, so sharded pub/sub (and a Redis
    cluster) keeps each project's channel on one shard."""
    return f"{CHANNEL_PREFIX}{{{project}}}"


def project_of(channel_name: str) -> str | None:
    if channel_name.startswith(CHANNEL_PREFIX + "{") and channel_name.endswith("}"):
        return channel_name[len(CHANNEL_PREFIX) + 1 : -1]
    return None


class Kind(StrEnum):
    OBJECT = "s"
    """An object's stamped state after an edit (the stored document)."""
    TOO_BIG = "b"
    """An object changed but its state is too large to relay: catch up from the table."""
    PRESENCE = "p"
    """A client's presence; ``presence`` None means it left."""
    PRESENCE_ALL = "pa"
    """Every client a replica has on a project ({client: presence}), every few seconds."""
    HELLO = "h"
    """A replica (re)subscribed to the project: holders answer with their unsaved states."""
    HEARTBEAT = "hb"
    DELETED = "x"
    """The project was deleted (its generation is now ``gen``): holders drop their copies."""

    @property
    def label(self) -> str:
        """The readable name metrics and logs use (``object``, ``presence_all``): the wire
        codes are short to keep messages small, not to be read on a dashboard."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    replica: str
    epoch: str
    project: str = ""
    seq: int = 0
    sent_ms: int = 0
    doc: dict[str, Any] | None = None
    object_id: str = ""
    client: str = ""
    presence: dict[str, Any] | None = None
    """A client's presence, or for PRESENCE_ALL every client's."""
    sub: str | None = None
    seqs: dict[str, int] = field(default_factory=dict)
    """Heartbeats: the publisher's last sequence per project it published to lately."""
    gen: int = 0
    """Objects: the generation of the copy they come from (a receiver of another ignores
    them); deletes: the project's new generation."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_KEYS = {
    "kind": "k",
    "replica": "r",
    "epoch": "e",
    "project": "p",
    "seq": "s",
    "sent_ms": "t",
    "doc": "d",
    "object_id": "i",
    "client": "c",
    "presence": "st",
    "sub": "u",
    "seqs": "q",
    "gen": "g",
}
_NAMES = {short: name for name, short in _KEYS.items()}
_DEFAULTS = Message(Kind.HEARTBEAT, "", "")


def encode(message: Message) -> bytes:
    """Compact JSON; fields at their default are left out."""
    out: dict[str, Any] = {}
    for name, short in _KEYS.items():
        value = getattr(message, name)
        if name == "kind":
            out[short] = str(value)
        elif value != getattr(_DEFAULTS, name):
            out[short] = value
    return _ENCODER.encode(out).encode()


class BadMessage(ValueError):
    """Not one of ours (another application on the same Redis, or a corrupted message)."""


_TYPES: dict[str, tuple[type, ...]] = {
    "replica": (str,),
    "epoch": (str,),
    "project": (str,),
    "seq": (int,),
    "sent_ms": (int,),
    "doc": (dict, type(None)),
    "object_id": (str,),
    "client": (str,),
    "presence": (dict, type(None)),
    "sub": (str, type(None)),
    "seqs": (dict,),
    "gen": (int,),
}


def decode(data: bytes | str) -> Message:
    """A message, or :class:`BadMessage` for anything else on the channel."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        fields = {_NAMES[k]: v for k, v in raw.items() if k in _NAMES}
        kind = Kind(fields.pop("kind"))
        for name, value in fields.items():
            if not isinstance(value, _TYPES[name]) or isinstance(value, bool):
                raise TypeError(f"{name} has the wrong type")
        return Message(kind, **fields)
    except (ValueError, TypeError, KeyError) as error:
        raise BadMessage(f"not a relay message: {error}") from None


class Sequencer:
    """The publisher's side: a sequence per project, and what the heartbeat reports."""

    def __init__(self, recent_s: float = 60.0) -> None:
        self._seqs: dict[str, int] = {}
        self._used: dict[str, float] = {}
        self.recent_s = recent_s

    def next(self, project: str, now: float | None = None) -> int:
        seq = self._seqs.get(project, 0) + 1
        self._seqs[project] = seq
        self._used[project] = time.monotonic() if now is None else now
        return seq

    def last(self, now: float | None = None) -> dict[str, int]:
        """Last sequence of each project published to within ``recent_s``; older ones are
        forgotten from the heartbeat (their receivers have long had the chance to notice)."""
        now = time.monotonic() if now is None else now
        for project in [p for p, used in self._used.items() if now - used > self.recent_s]:
            del self._used[project]
        return {project: self._seqs[project] for project in self._used}


class Verdict(StrEnum):
    IN_ORDER = "in_order"
    FIRST = "first"
    """The first message of this publisher for this project seen: nothing to compare with."""
    DUPLICATE = "duplicate"
    GAP = "gap"
    NEW_EPOCH = "new_epoch"


CATCH_UP = (Verdict.GAP, Verdict.NEW_EPOCH)


class Receiver:
    """The receiver's side: per publisher and project, the epoch and last sequence seen."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[str, int]] = {}

    def on_message(self, replica: str, epoch: str, project: str, seq: int) -> Verdict:
        key = (replica, project)
        known = self._last.get(key)
        if known is None:
            self._last[key] = (epoch, seq)
            return Verdict.FIRST
        known_epoch, last = known
        if known_epoch != epoch:
            self._last[key] = (epoch, seq)
            return Verdict.NEW_EPOCH
        if seq <= last:
            return Verdict.DUPLICATE
        self._last[key] = (epoch, seq)
        return Verdict.IN_ORDER if seq == last + 1 else Verdict.GAP

    def on_heartbeat(self, replica: str, epoch: str, seqs: Mapping[str, int], held: Iterable[str]) -> list[str]:
        """Held projects where the heartbeat shows messages this receiver never got.

        A publisher never heard from on a project sets the baseline: what it published
        before this replica subscribed reaches it through the table (see sync).
        """
        behind = []
        for project in held:
            seq = seqs.get(project)
            if seq is None:
                continue
            known = self._last.get((replica, project))
            if known is None:
                self._last[(replica, project)] = (epoch, seq)
            elif known[0] != epoch or known[1] < seq:
                self._last[(replica, project)] = (epoch, seq)
                behind.append(project)
        return behind

    def forget_project(self, project: str) -> None:
        for key in [k for k in self._last if k[1] == project]:
            del self._last[key]
