"""A client's state without I/O: the local copy, the changes not yet saved, what to send.

Both transports (the asyncio :class:`~canvas_sync.client.CanvasClient` and the blocking
:class:`~canvas_sync.client.blocking.BlockingClient`) drive one :class:`Session`: they
tell it what the user did (``create``, ``update``, ``delete``, ``set_presence``), that a
socket opened or closed, and each message the server sent; it answers with what to send
and with :class:`Event` values saying what changed. Keeping every rule here, and none of
the sockets, is what lets the rules be tested by the thousand (``tests/unit/
test_client_session.py``) and shared by clients that wait in different ways.

The rules, from the wire protocol (v3):

- ``objects`` is the server's state (the snapshot, then others' ``upsert``/``delete``,
  then this client's acked changes) with this client's changes still waiting for an ack
  applied on top, property by property. A server event therefore never undoes a property
  of a change still in flight; once acked, the server's events rule that property again.
- A change is kept until a ``saved`` covers its ``seq`` (v3). After a reconnect, to any
  replica, the new snapshot comes first, then every kept change is sent again in its
  original order: acked ones with the ``stamp`` of their ack (the server merges them
  idempotently, and a newer change by anyone still wins), never-acked ones without, as
  new changes, marked ``retry`` when they are a create or a delete (the server then takes
  a live id, or an object already gone, as the first send having landed). From a server
  that does not know ``retry``, a resent create answered ``conflict`` and a resent delete
  answered ``not_found`` mean the same: they count as done.
- A change answered ``rate_limited`` was not applied: it is sent again after a pause, not
  refused (the client also paces what it sends, below the server's default limit).
- Against an older server (v2/v1) there is no ``saved``: an ack is all the client can
  know, so it counts as saved, and nothing acked is replayed. There is no durability
  guarantee against a replica that dies before its auto-save then.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

V3 = "canvas-sync.v3"
"""Acks carry ``stamp`` and ``seq``, ``saved`` arrives, replays are merged by stamp; frames may batch."""
V2 = "canvas-sync.v2"
"""Frames may hold several messages (a JSON array); an ack is all a client learns."""
V1 = "canvas-sync.v1"
"""One message per frame."""
OFFERED = (V3, V2, V1)
"""What a client offers, newest first: the server selects the newest it knows."""
BEARER = "canvas-sync.bearer."
"""The prefix of the subprotocol that carries a token (browsers cannot set headers)."""

REPLAY_RETRIES = 3
"""Times a replayed update answered ``not_found`` is sent again (a pause before each) before it is dropped."""

Op = Literal["create", "update", "delete"]
Status = Literal["connecting", "open", "reconnecting", "closed"]


class ClientError(Exception):
    """A refusal: ``code`` is the server's error code (``conflict``, ``forbidden``, ...), an
    HTTP refusal's (``unauthorized``, ``bad_project``, ...) or the client's own
    (``closed``, ``project_deleted``, ``timeout``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def version_of(subprotocol: str | None) -> int:
    """3, 2 or 1: what the selected subprotocol says the server speaks (none is v1)."""
    return {V3: 3, V2: 2}.get(subprotocol or "", 1)


def offered(token: str | None = None, versions: Iterable[str] = OFFERED) -> list[str]:
    """The subprotocols to offer: the versions, then the token (when it travels this way)."""
    return [*versions, *([BEARER + token] if token else [])]


def messages_of(frame: str | bytes) -> list[dict[str, Any]]:
    """A server frame's messages: one object, or (v2, v3) a JSON array of them in order."""
    data = json.loads(frame)
    items = data if isinstance(data, list) else [data]
    return [item for item in items if isinstance(item, dict)]


def token_expiry(token: str) -> float | None:
    """The JWT's ``exp`` (seconds since the epoch), read without verifying: the client only
    needs to know when to renew; the server is the one that checks."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    except (IndexError, ValueError, TypeError):
        return None


def renew_in(token: str, now: float | None = None, margin: float = 30.0) -> float | None:
    """Seconds until a token should be renewed: at 75% of its remaining life or ``margin``
    seconds before ``exp``, whichever is earlier (None: it does not expire, or says not).
    A token that lives less than ``margin`` is renewed at 75%: "now" would renew it in a loop."""
    exp = token_expiry(token)
    if exp is None:
        return None
    left = exp - (time.time() if now is None else now)
    if left <= 0:
        return 0.0
    return min(0.75 * left, left - margin) if left > margin else 0.75 * left


@dataclass
class Backoff:
    """Reconnect delays: full jitter over ``base * 2**attempt`` capped at ``cap`` seconds.

    Full jitter (a uniform draw from zero to the cap of this attempt) spreads clients that
    lost their replica at the same instant over the whole window, so they do not all come
    back at once and knock over the replica that takes them (the thundering herd).
    ``reset`` after a connection that stayed open ``stable_after`` seconds."""

    base: float = 1.0
    cap: float = 30.0
    stable_after: float = 10.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 64)
        return self.rng.uniform(0.0, ceiling)

    def connected_for(self, seconds: float) -> None:
        """A connection ended after ``seconds`` open: long enough resets the delays."""
        if seconds >= self.stable_after:
            self.attempt = 0


@dataclass(eq=False)
class Change:
    """One local change, kept until it is saved (or refused)."""

    op: Op
    id: str
    body: dict[str, Any]
    """The object (create), the properties (update; ``None`` removes one) or nothing (delete)."""
    req: str
    """Its request id, the same on every send, echoed in its ack or error."""
    stamp: str | None = None
    """The stamp of its ack: what a replay carries."""
    seq: int | None = None
    """Its ``seq`` on the current connection (None until acked there)."""
    acked: bool = False
    """An ack came, on this connection or an earlier one."""
    sent: bool = False
    """Sent on the current connection (answered or not): not to be sent on it again."""
    sent_before: bool = False
    """Sent on an earlier connection that closed before it was answered."""
    replaying: bool = False
    """Acked on an earlier connection and not yet answered on this one: still overlays the copy."""
    answered: bool = False
    """Its caller has had the answer (the ack, or the refusal)."""
    contested: bool = False
    """The server sent this object's state while the change waited for its ack (see ``_ack``)."""
    retries: int = 0
    """Replays answered ``not_found`` so far (see ``_error``)."""
    handle: Any = None
    """The transport's waiter for the answer (an asyncio future, ...): never touched here."""

    @property
    def waiting(self) -> bool:
        """Applied on top of the server's state: not acked yet, or replayed and not yet re-acked."""
        return not self.acked or self.replaying

    def message(self, with_stamp: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"op": self.op, "req": self.req}
        if self.op == "create":
            message["object"] = self.body
        elif self.op == "update":
            message["id"], message["props"] = self.id, self.body
        else:
            message["id"] = self.id
        if with_stamp and self.acked and self.stamp is not None:
            message["stamp"] = self.stamp
        elif self.sent_before and not self.acked and self.op != "update":
            message["retry"] = True  # it may have landed: a live id (a gone object) is then no error
        return message


# --- what a session tells its transport ------------------------------------------------------


@dataclass(frozen=True)
class Changed:
    """The local copy changed: id -> the object now, or None when it is gone."""

    objects: dict[str, dict[str, Any] | None]


@dataclass(frozen=True)
class Answered:
    """A change's first answer: its ack (or, for a resend that had landed, a made-up one)."""

    change: Change
    ack: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """A change was refused and left the copy; its caller gets ``error``."""

    change: Change
    error: ClientError


@dataclass(frozen=True)
class Saved:
    """Fewer changes wait for ``saved`` (``unsaved`` of them are left)."""

    unsaved: int


@dataclass(frozen=True)
class PresenceChanged:
    """Another client's presence: its state now, or None when it left."""

    client: str
    state: dict[str, Any] | None


@dataclass(frozen=True)
class Reply:
    """The answer to a request that is not a change (``ping``, ``auth``, a presence with req)."""

    req: str
    message: dict[str, Any]


@dataclass(frozen=True)
class Synced:
    """A snapshot is in: the copy is the server's again, and the replay may go out."""

    replica: str | None


@dataclass(frozen=True)
class Throttled:
    """The server refused changes as ``rate_limited``: they wait to be sent again, after a pause."""

    changes: int


@dataclass(frozen=True)
class ServerError:
    """An error nobody waits for: a replayed change refused, or one without a ``req``."""

    error: ClientError
    change: Change | None = None


Event = Changed | Answered | Refused | Saved | PresenceChanged | Reply | Synced | ServerError | Throttled


class Session:
    """One client's view of one project, across every connection it makes."""

    def __init__(self, project: str, presence_interval: float = 0.05, verify_contested: bool = True) -> None:
        self.project = project
        self.verify_contested = verify_contested
        """Check an acked change again when the object's state came in while it waited (``_ack``)."""
        self.resend_due = False
        """Something is to be sent again (a check of a contested change): call :meth:`to_send`."""
        self.server: dict[str, dict[str, Any]] = {}
        """The server's state as this client knows it (nothing of its own waiting)."""
        self.objects: dict[str, dict[str, Any]] = {}
        """The local copy: ``server`` with the waiting changes on top. Read it, never write it."""
        self.changes: list[Change] = []
        """Every change not yet saved, in the order it was made."""
        self.others: dict[str, dict[str, Any]] = {}
        """Other clients' presence: client id -> state."""
        self.replica: str | None = None
        """The replica the last snapshot came from."""
        self.version = 0
        """The current connection's protocol version (0: not connected)."""
        self.synced = False
        """The current connection's snapshot is in."""
        self.saved_seq = 0
        """The highest ``saved`` of the current connection."""
        self.presence_interval = presence_interval
        self.presence: dict[str, Any] | None = None
        """This client's latest presence state (sent again after every reconnect)."""
        self._presence_unsent = False
        self._presence_sent_at = -math.inf
        self._reqs = itertools.count(1)
        self._by_req: dict[str, Change] = {}

    # --- what the user does ------------------------------------------------------------------

    @property
    def unsaved(self) -> int:
        """Changes not yet saved: waiting for their ack, or (v3) for the ``saved`` after it."""
        return len(self.changes)

    def new_req(self, prefix: str = "") -> str:
        """A request id unique within this session (changes keep theirs across connections)."""
        return f"{prefix}{next(self._reqs)}"

    def create(self, obj: Mapping[str, Any]) -> tuple[Change, Changed]:
        body = copy.deepcopy(dict(obj))
        object_id = body.get("id")
        if not isinstance(object_id, str):
            raise ClientError("bad_message", "an object needs a string 'id'")
        return self._add(Change("create", object_id, body, self.new_req()))

    def update(self, object_id: str, props: Mapping[str, Any]) -> tuple[Change, Changed]:
        if not props:
            raise ClientError("bad_message", "an update needs at least one property")
        return self._add(Change("update", object_id, copy.deepcopy(dict(props)), self.new_req()))

    def delete(self, object_id: str) -> tuple[Change, Changed]:
        return self._add(Change("delete", object_id, {}, self.new_req()))

    def _add(self, change: Change) -> tuple[Change, Changed]:
        self.changes.append(change)
        self._by_req[change.req] = change
        return change, Changed(self._recompute([change.id]))

    def withdraw(self, change: Change) -> Changed:
        """Take back a change that was never sent (its client closed before it could go)."""
        self._forget(change)
        return Changed(self._recompute([change.id]))

    def set_presence(self, state: Mapping[str, Any]) -> None:
        """Keep the latest state; :meth:`presence_due` says when it may go (latest wins)."""
        self.presence = copy.deepcopy(dict(state))
        self._presence_unsent = True

    def presence_due(self, now: float) -> float | None:
        """Seconds until the presence may be sent (0: now), None when nothing waits."""
        if not self._presence_unsent or not self.synced:
            return None
        return max(0.0, self._presence_sent_at + self.presence_interval - now)

    def take_presence(self, now: float) -> dict[str, Any] | None:
        """The presence message, if one waits and is due; it counts as sent."""
        due = self.presence_due(now)
        if due is None or due > 0 or self.presence is None:
            return None
        self._presence_unsent = False
        self._presence_sent_at = now
        return {"op": "presence", "state": self.presence}

    # --- the connection ----------------------------------------------------------------------

    def opened(self, subprotocol: str | None) -> None:
        """A socket opened with this subprotocol; nothing goes out before its snapshot."""
        self.version = version_of(subprotocol)
        self.synced = False
        self.saved_seq = 0

    def closed(self) -> list[Event]:
        """The socket is gone: what was in flight will be sent again, others' presence is stale."""
        for change in self.changes:
            if change.sent and not change.acked:
                change.sent_before = True
            change.sent = change.contested = False
            change.seq = None
        self.version = 0
        self.synced = False
        events: list[Event] = [PresenceChanged(client, None) for client in self.others]
        self.others = {}
        if self.presence is not None:
            self._presence_unsent = True
        return events

    def to_send(self) -> list[dict[str, Any]]:
        """Every change not yet sent on this connection, in order; each counts as sent. Empty
        until the snapshot is in (a replay follows the new snapshot)."""
        if not self.synced:
            return []
        self.resend_due = False
        out = []
        for change in self.changes:
            if not change.sent:
                change.sent = True
                out.append(change.message(with_stamp=self.version >= 3))
        return out

    # --- what the server says ----------------------------------------------------------------

    def receive(self, message: Mapping[str, Any]) -> list[Event]:
        """Apply one server message; what it changed."""
        op = message.get("op")
        if op == "snapshot":
            return self._snapshot(message)
        if op == "ack":
            return self._ack(message)
        if op == "error":
            return self._error(message)
        if op == "saved":
            return self._saved(message)
        if op == "upsert":
            obj = message.get("object")
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                self.server[obj["id"]] = obj
                return self._contest(obj["id"])
            return []
        if op == "delete":
            object_id = message.get("id")
            if isinstance(object_id, str):  # a delete never takes an earlier place: no doubt here
                self.server.pop(object_id, None)
                return self._changed([object_id])
            return []
        if op == "presence":
            client, state = message.get("client"), message.get("state")
            if isinstance(client, str) and isinstance(state, dict):
                self.others[client] = state
                return [PresenceChanged(client, state)]
            return []
        if op == "presence_leave":
            client = message.get("client")
            if isinstance(client, str) and self.others.pop(client, None) is not None:
                return [PresenceChanged(client, None)]
            return []
        req = message.get("req")
        if isinstance(req, str):  # pong, or something newer this client does not know
            return [Reply(req, dict(message))]
        return []

    def _contest(self, object_id: str) -> list[Event]:
        """An upsert came: it may be newer than a change of this object still waiting (``_ack``).

        Not while a replay of the object is in flight: the upsert is then the echo the server
        sends before that replay's ack, and taking it for doubt would re-ask every change of
        a drag, each re-ask's echo casting doubt on the next."""
        same = [change for change in self.changes if change.id == object_id]
        if not any(change.replaying and change.sent for change in same):
            for change in same:
                if change.sent and not change.acked:
                    change.contested = True
        return self._changed([object_id])

    def _snapshot(self, message: Mapping[str, Any]) -> list[Event]:
        before = set(self.objects)
        self.server = {o["id"]: o for o in message.get("objects", []) if isinstance(o, dict) and "id" in o}
        self.replica = message.get("replica") if isinstance(message.get("replica"), str) else None
        for change in self.changes:
            change.replaying = change.acked  # the new replica may lack it: it overlays until re-acked
        events: list[Event] = [PresenceChanged(client, None) for client in self.others]
        self.others = {}
        for entry in message.get("presence", []) or []:
            if isinstance(entry, dict) and isinstance(entry.get("client"), str):
                state: dict[str, Any] = entry["state"] if isinstance(entry.get("state"), dict) else {}
                self.others[entry["client"]] = state
                events.append(PresenceChanged(entry["client"], state))
        self.synced = True
        changed = self._changed(before | set(self.server) | {c.id for c in self.changes})
        return [*changed, *events, Synced(self.replica)]

    def _ack(self, message: Mapping[str, Any]) -> list[Event]:
        req = message.get("req")
        change = self._by_req.get(req) if isinstance(req, str) else None
        if change is None or not change.sent:
            return [Reply(req, dict(message))] if isinstance(req, str) else []
        stamp, seq = message.get("stamp"), message.get("seq")
        if isinstance(stamp, str):
            change.stamp = stamp
        change.seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        events: list[Event] = []
        if change.replaying and self.version >= 3:
            # v3 sends the object's current state before a replay's ack: the copy has it already,
            # and the replay may have lost to a newer change, so it is not applied again here.
            change.replaying = False
        else:
            change.acked, change.replaying = True, False
            self._apply_to_server(change)
            if change.contested and self.verify_contested and self.version >= 3 and change.stamp is not None:
                # The server's outbox lets a newer upsert of an object take the place of an older
                # one still waiting, which may be ahead of this ack: the state that came before
                # it may already hold a later change, which applying ours just hid. Sending the
                # change again with its stamp changes nothing on the server and makes it send
                # the object as it is now before the answer, so the copy cannot stay wrong.
                change.contested, change.replaying, change.sent = False, True, False
                self.resend_due = True
        if not change.answered:
            change.answered = True
            events.append(Answered(change, dict(message)))
        if self.version < 3 or change.seq is None:
            self._forget(change)  # an older server: the ack is all there is to know
            events.append(Saved(self.unsaved))
        events.extend(self._changed([change.id]))
        return events

    def _error(self, message: Mapping[str, Any]) -> list[Event]:
        code, text = str(message.get("code", "error")), str(message.get("message", ""))
        error = ClientError(code, text)
        req = message.get("req")
        change = self._by_req.get(req) if isinstance(req, str) else None
        if change is None or not change.sent:
            return [Reply(req, dict(message))] if isinstance(req, str) else [ServerError(error)]
        if code == "not_found" and change.replaying and change.op == "update" and change.retries < REPLAY_RETRIES:
            # A replayed update of an object the replica does not know: it may not have read the
            # dead replica's last save yet (a replica pulls the table every second or so).
            change.retries += 1
            change.sent = False
            self.resend_due = True
            return [Throttled(1)]
        if code == "rate_limited":
            # Nothing was applied: the change is not refused, only early. It goes again, in its
            # place, once the transport has paused (a replay burst may meet the server's limit).
            change.sent = False
            self.resend_due = True
            return [Throttled(1)]
        events: list[Event] = []
        landed = change.sent_before or change.acked  # an earlier send (or its ack) reached a server
        if landed and (change.op, code) in (("create", "conflict"), ("delete", "not_found")):
            # The first send reached the server before its connection died: it is done.
            self._forget(change)
            if not change.answered:
                change.answered = True
                events.append(Answered(change, {"op": "ack", "req": change.req}))
            events.append(Saved(self.unsaved))
        else:
            self._forget(change)
            if change.answered:
                events.append(ServerError(error, change))  # a replay refused: its caller had its ack
            else:
                change.answered = True
                events.append(Refused(change, error))
            events.append(Saved(self.unsaved))
        events.extend(self._changed([change.id]))
        return events

    def _saved(self, message: Mapping[str, Any]) -> list[Event]:
        seq = message.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= self.saved_seq:
            return []
        self.saved_seq = seq
        done = [c for c in self.changes if c.seq is not None and c.seq <= seq and not c.replaying]
        for change in done:
            self._forget(change)
        return [Saved(self.unsaved)] if done else []

    # --- the copy ----------------------------------------------------------------------------

    def _forget(self, change: Change) -> None:
        if change in self.changes:
            self.changes.remove(change)
        self._by_req.pop(change.req, None)

    def _apply_to_server(self, change: Change) -> None:
        """An acked change as the server applied it (no echo comes back to its sender)."""
        if change.op == "create":
            old = self.server.get(change.id)  # there only for a retried create: set over what it had
            self.server[change.id] = change.body if old is None else _patched(old, change.body)
        elif change.op == "delete":
            self.server.pop(change.id, None)
        elif change.id in self.server:
            self.server[change.id] = _patched(self.server[change.id], change.body)

    def _view(self, object_id: str, waiting: list[Change]) -> dict[str, Any] | None:
        view = self.server.get(object_id)
        for change in waiting:
            if change.op == "create":
                view = change.body
            elif change.op == "delete":
                view = None
            elif view is not None:
                view = _patched(view, change.body)
        return view

    def _recompute(self, ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        changed: dict[str, dict[str, Any] | None] = {}
        waiting: dict[str, list[Change]] = {}
        for change in self.changes:
            if change.waiting:
                waiting.setdefault(change.id, []).append(change)
        for object_id in ids:
            view = self._view(object_id, waiting.get(object_id, []))
            if view == self.objects.get(object_id):
                continue
            if view is None:
                del self.objects[object_id]
            else:
                self.objects[object_id] = view
            changed[object_id] = view
        return changed

    def _changed(self, ids: Iterable[str]) -> list[Event]:
        changed = self._recompute(ids)
        return [Changed(changed)] if changed else []


def _patched(obj: dict[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    """An update's effect: properties set, ``None`` removes one (``type`` is never removed)."""
    out = dict(obj)
    for name, value in props.items():
        if value is None:
            if name != "type":
                out.pop(name, None)
        else:
            out[name] = value
    return out
