"""The generated references: ``docs/configuration.md`` and ``helm/canvas-sync/README.md``.

    python -m canvas_sync.devtools.docs           # write both
    python -m canvas_sync.devtools.docs --check   # exit 1, naming each file that drifted

- ``docs/configuration.md`` comes from :class:`canvas_sync.config.Settings`: every field as
  ``CANVAS_<NAME>``, its default as an operator would write it in the environment, what it
  accepts, and its meaning, which is the docstring under the field (pydantic's
  ``use_attribute_docstrings``). The whole page is generated: to change it, change
  ``config.py`` (or the notes below) and run this.
- ``helm/canvas-sync/README.md`` comes from ``values.yaml``'s ``## @section`` and
  ``## @param key description`` comments, as Bitnami's readme-generator does: per section a
  table Name | Description | Value, the value being the default in ``values.yaml``. The part
  of the README above :data:`CHART_MARKER` is written by hand and kept as it is.

``tests/unit/test_docs.py`` fails when either file is behind what this writes.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from ..config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[3]
"""The repository: service/canvas_sync/devtools/docs.py is three folders down."""
CONFIGURATION = Path("docs/configuration.md")
CHART_VALUES = Path("helm/canvas-sync/values.yaml")
CHART_README = Path("helm/canvas-sync/README.md")
COMMAND = "python -m canvas_sync.devtools.docs"

# --- docs/configuration.md ------------------------------------------------------------

CONTRACT = frozenset(
    {
        "host",
        "port",
        "table",
        "dynamodb_endpoint",
        "create_table",
        "autosave_interval",
        "sync_interval",
        "replica_id",
        "max_message_bytes",
        "max_object_bytes",
        "max_objects_per_project",
        "shutdown_timeout",
        "log_level",
        "auth",
        "auth_jwks_url",
        "auth_secret",
        "auth_issuer",
        "auth_audience",
        "auth_leeway",
        "auth_query_token",
        "allowed_origins",
        "redis_url",
    }
)
"""The settings of the public contract: never renamed or dropped without a version bump."""

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Service",
        (
            "host",
            "port",
            "table",
            "dynamodb_endpoint",
            "create_table",
            "autosave_interval",
            "sync_interval",
            "replica_id",
            "max_message_bytes",
            "max_object_bytes",
            "max_objects_per_project",
            "shutdown_timeout",
            "log_level",
        ),
    ),
    (
        "Authentication and limits per client",
        (
            "auth",
            "auth_jwks_url",
            "auth_secret",
            "auth_algorithms",
            "auth_issuer",
            "auth_audience",
            "auth_leeway",
            "auth_query_token",
            "allowed_origins",
            "max_connections_per_subject",
            "max_connections_per_address",
            "max_connections_per_project",
            "rate_limit",
            "rate_limit_close_after",
            "dev_token_key",
        ),
    ),
    (
        "Live relay",
        (
            "redis_url",
            "redis_password",
            "relay_heads_interval",
            "relay_reconcile_interval",
            "relay_heartbeat",
            "relay_queue_size",
        ),
    ),
    (
        "Sockets and memory",
        (
            "event_loop",
            "send_queue_size",
            "send_interval",
            "gather_lag",
            "websocket_compression",
            "websocket_window_bits",
            "websocket_compress_min_bytes",
            "websocket_compress_share",
            "project_idle_timeout",
        ),
    ),
    (
        "Saving and pulling",
        (
            "autosave_max_backoff",
            "save_concurrency",
            "save_gil_share",
            "sync_overlap",
            "reconcile_interval",
            "sync_max_backoff",
            "max_clock_drift",
            "clock_offset_ms",
        ),
    ),
    (
        "Deletes and stored size",
        (
            "tombstone_ttl",
            "max_tombstones_per_project",
            "tombstone_grace",
            "max_stored_object_bytes",
        ),
    ),
    (
        "Projects as resources",
        (
            "registry_interval",
            "version_interval",
            "version_retention",
            "max_request_bytes",
        ),
    ),
)
"""How the page groups the settings; a field in no group lands in "Other settings"."""

FACTORY_DEFAULTS: dict[Callable[[], Any], str] = {socket.gethostname: "host name"}
"""Defaults computed at start-up, as the page names them."""

CONFIGURATION_HEAD = f"""\
# Configuration

<!-- Generated from canvas_sync.config.Settings by `{COMMAND}`: edit the docstrings in
service/canvas_sync/config.py, then run it (tests/unit/test_docs.py fails when this page is behind). -->

A replica is configured through environment variables, one per setting, named
`{ENV_PREFIX}<NAME>`. On `canvas-sync serve`, the flags `--host` and `--port` override
`CANVAS_HOST` and `CANVAS_PORT`. Every value is checked once at start-up: a bad one
(a non-number interval, a negative size, an unknown log level, a JWKS URL that is not one)
stops the process with one line naming the variable, its value and what is wrong, and exit
code 2, so a crash-looping pod's log says what to fix. With `CANVAS_AUTH=jwt` (the
default), `serve` also needs exactly one of `CANVAS_AUTH_JWKS_URL` and `CANVAS_AUTH_SECRET`.

Settings marked **contract** are the public interface: they are not renamed or dropped
without a version bump noted in the README. The others are tuning and may change. Booleans
are `true`/`false`; "unset" means the variable is absent; lists are comma-separated.

"""

CONFIGURATION_TAIL = (
    """\
## AWS

| variable | default | meaning |
|---|---|---|
| AWS variables | boto3's chain | """
    "`AWS_REGION` / `AWS_DEFAULT_REGION`, credentials, IRSA, EKS Pod Identity: boto3's usual chain, "
    "nothing of canvas-sync's own. With `CANVAS_DYNAMODB_ENDPOINT` set and no credentials, dummy "
    "credentials and `us-east-1` are used; without an endpoint and without a region, start-up stops "
    "with exit 2 and says to set `AWS_REGION`. |\n"
)


def env_default(name: str, info: FieldInfo) -> str:
    """The default as an operator would write it in the environment (Markdown)."""
    if _is_secret(info):
        return "unset (secret)"
    if info.default_factory is not None:
        try:
            return FACTORY_DEFAULTS[info.default_factory]  # type: ignore[index]
        except KeyError:
            raise ValueError(f"{name}: say in FACTORY_DEFAULTS how its computed default reads") from None
    rendered = env_value(info.default)
    return {None: "unset", "": "empty"}.get(rendered, f"`{rendered}`")


def env_value(value: Any) -> str | None:
    """A value as it is written in the environment: ``true``, ``5``, ``0.02``, ``info``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def accepts(info: FieldInfo) -> str:
    """What a value may be, from the field's type and constraints."""
    kind = _base_type(info.annotation)
    if kind is bool:
        return "`true` or `false`"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(f"`{member.value}`" for member in kind)
    bounds = _bounds(info, integer=kind is int)
    if kind is int:
        return "integer" + (f" {bounds}" if bounds else "")
    if kind is float:
        return "number" + (f" {bounds}" if bounds else "")
    text = "text"
    lengths = [m for m in info.metadata if isinstance(m, MinLen | MaxLen)]
    if lengths:
        low = next((m.min_length for m in lengths if isinstance(m, MinLen)), None)
        high = next((m.max_length for m in lengths if isinstance(m, MaxLen)), None)
        if high is not None:
            text += f", {low or 0} to {high} characters"
        elif low == 1:
            text += ", not empty"
        elif low:
            text += f", at least {low} characters"
    pattern = next((getattr(m, "pattern", None) for m in info.metadata if getattr(m, "pattern", None)), None)
    if pattern:
        text += f" matching `{pattern}`"
    return text


def _base_type(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _is_secret(info: FieldInfo) -> bool:
    return _base_type(info.annotation) is SecretStr


def _bounds(info: FieldInfo, integer: bool) -> str:
    """``> 0``, ``≥ 0``, ``9 to 15``: the field's numeric constraints (an integer's ``> 0`` as ``≥ 1``)."""
    low: tuple[str, Any] | None = None
    high: tuple[str, Any] | None = None
    for m in info.metadata:
        if isinstance(m, Gt):
            gt: Any = m.gt
            low = ("≥", gt + 1) if integer else (">", gt)
        elif isinstance(m, Ge):
            low = ("≥", m.ge)
        elif isinstance(m, Lt):
            lt: Any = m.lt
            high = ("≤", lt - 1) if integer else ("<", lt)
        elif isinstance(m, Le):
            high = ("≤", m.le)
    if low and high and low[0] == "≥" and high[0] == "≤":
        return f"{env_value(low[1])} to {env_value(high[1])}"
    return ", ".join(f"{bound[0]} {env_value(bound[1])}" for bound in (low, high) if bound)


def markdown(docstring: str) -> str:
    """A field's docstring as one line of Markdown for a table cell."""
    text = " ".join(line.strip() for line in docstring.strip().splitlines())
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", text)  # Sphinx roles: the last name
    text = text.replace("``", "`")
    text = re.sub(r"(?<![`\w])(CANVAS_[A-Z0-9_]+)(?![`\w])", r"`\1`", text)  # variables as code
    return text.replace("|", "\\|")


def configuration(settings: type[Settings] = Settings) -> str:
    """docs/configuration.md, whole."""
    fields = settings.model_fields
    grouped = [name for _, names in GROUPS for name in names]
    unknown = [name for name in grouped if name not in fields]
    if unknown:
        raise ValueError(f"GROUPS names settings that do not exist: {', '.join(unknown)}")
    others = tuple(name for name in fields if name not in grouped)
    groups = [*GROUPS, ("Other settings", others)] if others else list(GROUPS)
    out = [CONFIGURATION_HEAD]
    for title, names in groups:
        out.append(f"## {title}\n\n| variable | default | accepts | meaning |\n|---|---|---|---|\n")
        for name in names:
            info = fields[name]
            if not info.description:
                raise ValueError(f"Settings.{name} has no docstring: write one under the field in config.py")
            variable = f"`{ENV_PREFIX}{name.upper()}`" + (" **contract**" if name in CONTRACT else "")
            out.append(f"| {variable} | {env_default(name, info)} | {accepts(info)} | {markdown(info.description)} |\n")
        out.append("\n")
    out.append(CONFIGURATION_TAIL)
    return "".join(out)


# --- helm/canvas-sync/README.md ---------------------------------------------------------

CHART_MARKER = (
    "<!-- Everything below is generated from values.yaml by `python -m canvas_sync.devtools.docs`: "
    "edit its `## @param` comments, not this file. Everything above is written by hand and kept. -->"
)

CHART_HEAD = """\
# canvas-sync Helm chart

Runs canvas-sync (real-time collaborative canvases over WebSocket, saved to DynamoDB in
batches) as a Deployment of replicas that converge through DynamoDB and relay edits over
Redis/Valkey, with an optional HPA, PDB, Ingress or Gateway API HTTPRoute, NetworkPolicy,
ServiceMonitor, alerts, Grafana dashboard, DynamoDB Local and Valkey for development, a
`helm test` probe and a Locust load-test Job.

```sh
helm install canvas helm/canvas-sync --set auth.jwksUrl=https://login.example.com/.well-known/jwks.json
helm test canvas
```

Examples (a development cluster, AWS with IRSA), the IAM permissions and what the values
mean together: [docs/operations.md](../../docs/operations.md). Every value below is typed in
`values.schema.json`, so a misspelt key is refused.

"""


@dataclass
class Param:
    key: str
    description: str
    line: int


@dataclass
class Section:
    title: str
    params: list[Param] = field(default_factory=list)


_SECTION = re.compile(r"^##\s*@section\s+(.+?)\s*$")
_PARAM = re.compile(r"^##\s*@param\s+(\S+)\s*(.*?)\s*$")


def chart_sections(values_text: str) -> list[Section]:
    """The ``@section`` and ``@param`` comments of values.yaml, in order."""
    sections: list[Section] = []
    for number, line in enumerate(values_text.splitlines(), 1):
        if match := _SECTION.match(line):
            sections.append(Section(match[1]))
        elif match := _PARAM.match(line):
            if not sections:
                sections.append(Section("Parameters"))
            sections[-1].params.append(Param(match[1], match[2], number))
    return sections


_MISSING = object()


def lookup(values: Any, key: str) -> Any:
    """The value at a dotted key, or :data:`_MISSING`."""
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def leaves(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of every leaf value: scalars, lists, and empty maps."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaves(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1]


def load_values(text: str) -> Any:
    yaml = importlib.import_module("yaml")  # a test dependency, like this module's users
    return yaml.safe_load(text)


def compact(value: Any) -> str:
    """A default for a table cell: strings as they are, everything else as compact JSON."""
    if isinstance(value, str) and value:
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "`" + text.replace("|", "\\|") + "`"


def chart_readme(values_text: str, head: str = CHART_HEAD) -> str:
    """The chart's README: ``head`` (ending before the marker) and the generated tables."""
    values = load_values(values_text)
    out = [head.rstrip("\n") + "\n\n" + CHART_MARKER + "\n\n## Parameters\n"]
    for section in chart_sections(values_text):
        out.append(f"\n### {section.title}\n\n| Name | Description | Value |\n|---|---|---|\n")
        for param in section.params:
            value = lookup(values, param.key)
            if value is _MISSING:
                raise ValueError(f"values.yaml line {param.line}: @param {param.key} names no value")
            description = param.description.replace("|", "\\|")
            out.append(f"| `{param.key}` | {description} | {compact(value)} |\n")
    return "".join(out)


def chart_head(existing: str | None) -> str:
    """The hand-written part of the chart's README: what is above the marker, or the default."""
    if existing is not None and CHART_MARKER in existing:
        return existing.split(CHART_MARKER, 1)[0]
    return CHART_HEAD


# --- both -----------------------------------------------------------------------------


def outputs(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file (relative to ``root``) and what it should hold now."""
    readme = root / CHART_README
    existing = readme.read_text() if readme.exists() else None
    return {
        CONFIGURATION: configuration(),
        CHART_README: chart_readme((root / CHART_VALUES).read_text(), chart_head(existing)),
    }


def drifted(root: Path = ROOT) -> list[Path]:
    """The generated files whose content is not what :func:`outputs` makes."""
    return [
        path for path, text in outputs(root).items() if not (root / path).exists() or (root / path).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is behind")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    args = parser.parse_args(argv)
    root: Path = args.root
    if not (root / CHART_VALUES).exists():
        print(f"{root} is not a canvas-sync checkout (no {CHART_VALUES})", file=sys.stderr)
        return 2
    if args.check:
        behind = drifted(root)
        for path in behind:
            print(f"{path} drifted from what generates it: run `{COMMAND}`", file=sys.stderr)
        if not behind:
            print("generated docs are up to date")
        return 1 if behind else 0
    for path, text in outputs(root).items():
        target = root / path
        if target.exists() and target.read_text() == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
