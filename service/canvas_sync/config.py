"""Settings from the environment (``CANVAS_*``), validated once at start-up.

A bad value must stop the process with one line that names the variable, so an operator
reading a crash-looping pod's log sees at once what to fix. pydantic-settings does the
parsing; :func:`load_settings` turns its error into that one line.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .auth import algorithms_for, check_secret
from .model import TOMBSTONE_GRACE, TOMBSTONE_TTL

ENV_PREFIX = "CANVAS_"
MAX_STORED_OBJECT_BYTES = 384 * 1024
"""DynamoDB's item limit is 400 KB, keys and other attributes included."""


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


class AuthMode(StrEnum):
    jwt = "jwt"
    off = "off"


class EventLoop(StrEnum):
    uvloop = "uvloop"
    asyncio = "asyncio"


class Settings(BaseSettings):
    """Every knob of one replica. Names map to ``CANVAS_<NAME>`` variables.

    The docstring under each field is its documentation: ``docs/configuration.md`` is
    generated from them (``python -m canvas_sync.devtools.docs``), and a unit test fails
    when a field has none or the page is behind.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, use_attribute_docstrings=True)

    host: str = "0.0.0.0"
    """Bind address (``--host`` overrides)."""
    port: int = Field(8080, ge=0, le=65535)
    """HTTP + WebSocket port (``--port`` overrides)."""
    table: str = Field("canvas_objects", min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    """DynamoDB table name."""
    dynamodb_endpoint: str | None = None
    """DynamoDB endpoint URL, e.g. ``http://127.0.0.1:8000`` for DynamoDB Local; unset: AWS. With an
    endpoint and no credentials, dummy credentials and ``us-east-1`` are used."""
    create_table: bool = False
    """Create the table (its change-feed index and TTL too) at start if missing."""
    autosave_interval: float = Field(5.0, gt=0)
    """Seconds between auto-save passes (fractions allowed)."""
    sync_interval: float = Field(1.0, gt=0)
    """Seconds between pulls of other replicas' saved changes (fractions allowed)."""
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    """Identifies this replica in logs, clock stamps and ``/health``."""
    max_message_bytes: int = Field(65536, gt=0)
    """Largest WebSocket frame accepted; a larger one closes the connection with 1009 (so does a
    compressed frame that would inflate past it)."""
    max_object_bytes: int = Field(16384, gt=0)
    """Largest object accepted, measured as its canonical JSON; larger gets ``too_large``."""
    max_objects_per_project: int = Field(10000, gt=0)
    """Live objects per project; a create beyond it gets ``limit_exceeded``."""
    shutdown_timeout: float = Field(20.0, gt=0)
    """Seconds allowed for the final flush on shutdown; ``serve`` exits 1 if something could not be
    saved within it."""
    log_level: LogLevel = LogLevel.info
    """Level of the JSON log lines on stderr."""

    auth: AuthMode = AuthMode.jwt
    """``jwt``: every project route and socket needs a token, and ``serve`` refuses to start without a
    way to verify one (a JWKS or a secret). ``off``: no checks (development only; logged as a
    warning at start)."""
    auth_jwks_url: str | None = None
    """The issuer's JWKS, for ES256/RS256 tokens: ``https://…/.well-known/jwks.json`` (an OIDC
    issuer's ``jwks_uri``), or ``file://`` for keys made by ``canvas-sync keygen``."""
    auth_secret: SecretStr | None = None
    """An HS256 shared secret of at least 32 bytes, instead of a JWKS."""
    auth_algorithms: str = ""
    """Comma-separated allow-list (ES256, RS256, HS256); empty: by key type, ES256 and RS256 with a
    JWKS, HS256 with a secret. ``alg: none`` is never accepted."""
    auth_issuer: str | None = None
    """When set, a token's ``iss`` must equal it."""
    auth_audience: str = Field("canvas-sync", min_length=1)
    """A token's ``aud`` must contain it."""
    auth_leeway: float = Field(30.0, ge=0, le=300)
    """Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``."""
    auth_query_token: bool = False
    """Also accept a token in ``?token=`` (off by default: access logs keep query strings)."""
    allowed_origins: str = ""
    """Comma-separated browser origins allowed besides the service's own (which always is), matched
    exactly. Requests without ``Origin`` are not browsers and are judged by their token alone."""

    redis_url: str | None = None
    """``redis://``, ``rediss://`` (TLS) or ``unix://`` URL of Redis/Valkey for the live relay between
    replicas; unset: no relay, convergence through the table only."""
    redis_password: SecretStr | None = None
    """Password (AUTH) for the relay's Redis, kept out of the URL (the chart fills it from a Secret)."""

    # Beyond the contract (docs/configuration.md, generated from these docstrings, marks which are).
    event_loop: EventLoop = EventLoop.uvloop
    """uvloop measured about 40% more WebSocket round trips than asyncio's own loop; where it is
    not installed, asyncio's loop runs, with a warning."""
    project_idle_timeout: float = Field(300.0, gt=0)
    """Seconds a project with no connections and nothing unsaved stays in memory."""
    send_queue_size: int = Field(1024, gt=0)
    """Messages queued for one WebSocket client. A newer state of an object replaces one still
    queued, so only different objects count; a client that falls that far behind is too slow
    and is closed with 1013."""
    send_interval: float = Field(0.02, ge=0, le=1)
    """Seconds a socket whose frames had to wait for the client (its transport backed up)
    waits after such a frame of several messages before the next, so that what arrives
    meanwhile goes out together (one frame for ``canvas-sync.v2``) and a newer state of an
    object replaces an older one. Every other frame leaves at the end of the event loop's
    turn, which on a busy loop already holds more. ``0`` turns it off. Only while the pod is
    busy: see ``CANVAS_GATHER_LAG``."""
    gather_lag: float = Field(0.002, ge=0, le=1)
    """Seconds the event loop must run late before a backed-up socket gathers
    (``CANVAS_SEND_INTERVAL``) and only big messages are compressed: on a quiet pod every
    message goes out at once, with no latency floor. ``0``: always."""
    rate_limit: float = Field(1000.0, ge=0)
    """Messages per second one connection may sustain (bursts of twice that) before it gets
    ``rate_limited``; ``0`` turns it off. Every frame counts, malformed ones too."""
    sync_overlap: float = Field(10.0, gt=0)
    """Seconds of the change feed re-read each pull: covers clock skew, slow saves, index lag."""
    reconcile_interval: float = Field(60.0, gt=0)
    """Seconds between full re-reads of each held project (a safety net under the feed)."""
    autosave_max_backoff: float = Field(30.0, gt=0)
    """Longest pause between auto-save passes while DynamoDB fails (the pause grows, with jitter)."""
    save_concurrency: int = Field(4, gt=0, le=32)
    """BatchWriteItem calls in flight at once during one pass."""
    save_gil_share: float = Field(0.25, gt=0, le=1)
    """Share of the time the auto-save threads may hold Python's GIL together (building items,
    botocore's requests and responses): their batches are spaced so that the event loop gets
    the GIL back at once when it asks (``1``: unpaced). At a quarter the loop's lag during a
    pass over 10,000 objects was a third lower (the ``stall`` benchmark) and a pass still
    saved about 5,900 items a second, against 6,400 unpaced; the final flush is never paced."""
    tombstone_ttl: float = Field(TOMBSTONE_TTL, gt=0)
    """Seconds a delete is remembered at most (in memory, and the table's TTL on its item).
    A replica cut off from DynamoDB for about this long reads its projects again whole when
    it is back, so expiry never undoes a delete."""
    max_tombstones_per_project: int = Field(10_000, gt=0)
    """The tombstone budget: deletes a project remembers beyond the grace period. Past it the
    oldest are forgotten (their items deleted) and the project's horizon moves past them;
    nothing is ever refused because of past deletes. The table holds at most the live
    objects, this many tombstones and the deletes of the last CANVAS_TOMBSTONE_GRACE."""
    tombstone_grace: float = Field(TOMBSTONE_GRACE, gt=0)
    """Seconds a tombstone is kept after it settled (saved, or read from the table) before the
    budget may forget it: every replica that keeps up has it by then. A replica whose reads
    of the table failed for a third of this stops saving the project until it has caught up,
    and reads it again whole if deletes were forgotten meanwhile; a save retries for at most
    a sixth of it. Keep it above three times CANVAS_RELAY_HEADS_INTERVAL (and
    CANVAS_SYNC_INTERVAL) and above twice CANVAS_SYNC_OVERLAP."""
    max_stored_object_bytes: int = Field(65_536, gt=0, le=MAX_STORED_OBJECT_BYTES)
    """What one object may take in the table: its values plus removed properties' names and every
    stamp; an edit past it gets ``too_large``. At least CANVAS_MAX_OBJECT_BYTES, at most 384 KiB
    (DynamoDB refuses items over 400 KB)."""
    max_clock_drift: float = Field(300.0, gt=0)
    """Seconds ahead of the wall clock a stamp read from the table may move this replica's clock;
    further is clamped, counted and logged."""
    relay_heads_interval: float = Field(15.0, gt=0)
    """While the relay is healthy: seconds between reads of each held project's ``#head`` (back to
    CANVAS_SYNC_INTERVAL when it is not)."""
    relay_reconcile_interval: float = Field(600.0, gt=0)
    """While the relay is healthy: seconds between full re-reads of each held project."""
    relay_heartbeat: float = Field(1.0, gt=0)
    """Seconds between relay heartbeats; silence for three means a replica (or our subscription) is gone."""
    relay_queue_size: int = Field(10_000, gt=0)
    """Messages waiting to be published; beyond it they are dropped, counted, and the receivers
    catch up."""
    max_connections_per_subject: int = Field(50, ge=0)
    """Open sockets one token subject may hold at once on this replica (HTTP 429 beyond; ``0``: no
    limit)."""
    max_connections_per_address: int = Field(500, ge=0)
    """Open sockets from one client address on this replica (``0``: no limit; behind a proxy every
    client shares its address)."""
    max_connections_per_project: int = Field(1000, ge=0)
    """Open sockets on one project on this replica (``0``: no limit)."""
    rate_limit_close_after: int = Field(50, ge=1)
    """Messages answered ``rate_limited`` in a row before the socket is closed with 4429."""
    dev_token_key: str | None = None
    """Development only (``canvas-sync dev`` sets it): a private key the demo page's
    ``/dev/token`` endpoint signs editor tokens with. Never set this in production."""
    sync_max_backoff: float = Field(30.0, gt=0)
    """Longest pause before a failed read (of one project, or of a whole pull pass) is tried again."""
    websocket_compression: bool = True
    """Accept permessage-deflate when a client offers it (browsers do): big snapshots shrink
    about tenfold. The server answers with no context takeover in both directions, so no zlib
    state outlives a message and an idle connection costs the same as without (37.6 KB
    against 37.3 in the ``memory`` benchmark; 60 KB when each kept a compressor);
    ``false`` saves the CPU of compressing."""
    websocket_window_bits: int = Field(11, ge=9, le=15)
    """The deflate window the server compresses with (``server_max_window_bits``), and the
    most it lets a client use (``client_max_window_bits``, when offered). Canvas JSON
    repeats itself within a few hundred bytes: 11 (2 KiB) compresses snapshots as well as
    15 (32 KiB, zlib's default). zlib's memory level follows it, so compressing one message
    takes about 16 KiB while it lasts, not 256."""
    websocket_compress_min_bytes: int = Field(16384, ge=0)
    """With permessage-deflate, messages shorter than this go uncompressed (each message
    may choose, RFC 7692): snapshots shrink tenfold, but a big board's frames of a few KB
    (to every socket, dozens of times a second) would be inflated by every client. At 512
    bytes, each broadcast compressed once, the big board's p99 was 202 ms at 192 clients and
    75 ms at 256, no better than at 16 KiB (256 clients on a core). ``0`` compresses every
    message. While the event loop runs late, only messages of 64 KiB and more are compressed."""
    websocket_compress_share: float = Field(0.1, gt=0, le=1)
    """With permessage-deflate, the most of one core compressing may take; frames past it
    go uncompressed (each message may choose). A broadcast is compressed once for all its
    sockets; a socket's own big frames (its snapshot) one by one. ``1``: no limit."""
    version_interval: float = Field(0.0, ge=0)
    """Seconds between automatic versions (snapshots in the table) of a project while it is
    edited: a project this replica saved since its last version gets a new one once the
    newest is this old. ``0`` (the default): only the versions asked for
    (``POST /projects/{p}/versions``)."""
    version_retention: int = Field(100, ge=1, le=10_000)
    """Versions kept per project; beyond it the oldest automatic one is deleted (the oldest
    named one when all are named)."""
    registry_interval: float = Field(60.0, gt=0)
    """Least seconds between two writes of one project's entry in the registry that
    ``GET /projects`` lists (its object count and ``updated_at``): a project is registered
    within seconds of its first change here, then at most this often while its saves go
    on, never once per edit."""
    max_request_bytes: int = Field(32 * 1024 * 1024, gt=0)
    """Largest HTTP request body accepted (an import of a whole project, a batch of ops);
    larger gets HTTP 413."""
    clock_offset_ms: int = 0
    """Milliseconds added to the wall clock; for tests that simulate a replica with a skewed clock."""

    @field_validator("auth_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value().encode())
        return value

    @field_validator("auth_jwks_url")
    @classmethod
    def _jwks_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://", "file://")):
            raise ValueError("must be an https:// (or file://) URL of a JWKS")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        return value or None

    @field_validator("max_stored_object_bytes")
    @classmethod
    def _stored_holds_visible(cls, value: int, info: ValidationInfo) -> int:
        visible = info.data.get("max_object_bytes")
        if visible is not None and value < visible:
            raise ValueError(
                f"must be at least CANVAS_MAX_OBJECT_BYTES ({visible}): "
                "what is stored holds the visible object and its stamps"
            )
        return value

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The accepted JWT algorithms (see :func:`~canvas_sync.auth.algorithms_for`)."""
        return algorithms_for(self.auth_algorithms, self.auth_secret is not None)

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in self.allowed_origins.split(",") if o.strip()]


def describe_error(error: ValidationError) -> str:
    """One line naming the first bad variable, its value and what is wrong with it."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    value: Any = first.get("input")
    return f"invalid configuration: {ENV_PREFIX}{field.upper()}={value!r}: {first['msg']}"


class ConfigError(Exception):
    """Raised with the one-line description; the CLI prints it and exits 2."""


def load_settings(serving: bool = True, **overrides: Any) -> Settings:
    """Read the environment; ``overrides`` (command-line flags) win over it.

    ``serving``: the settings are for a replica, which must know how to verify tokens
    unless authentication is explicitly off (commands like create-table need no keys).
    """
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise ConfigError(describe_error(error)) from None
    try:
        settings.algorithms  # noqa: B018  # checked once, here, with the variable named
    except ValueError as error:
        raise ConfigError(
            f"invalid configuration: CANVAS_AUTH_ALGORITHMS={settings.auth_algorithms!r}: {error}"
        ) from None
    if serving and settings.auth == AuthMode.jwt and (settings.auth_jwks_url is None) == (settings.auth_secret is None):
        raise ConfigError(
            "invalid configuration: CANVAS_AUTH=jwt needs exactly one of CANVAS_AUTH_JWKS_URL and "
            "CANVAS_AUTH_SECRET (or CANVAS_AUTH=off, for development only)"
        )
    return settings
