"""The ``canvas-sync`` command: ``serve``, ``create-table``, ``dev``, ``probe``, ``keygen``, ``token``
and ``projects`` (the projects API over HTTP, ``admin.py``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from botocore.exceptions import NoRegionError

from . import __version__, admin
from .config import ConfigError, Settings, load_settings
from .logs import setup_logging

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canvas-sync", description="Real-time collaborative canvas backend.")
    parser.add_argument("--version", action="version", version=f"canvas-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one replica (CANVAS_* variables configure it)")
    serve.add_argument("--host", help="bind address (CANVAS_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="HTTP + WebSocket port (CANVAS_PORT, default 8080)")
    sub.add_parser("create-table", help="create the DynamoDB table and its index if missing")
    probe = sub.add_parser("probe", help="open a WebSocket, ping, expect a pong (exit 0) (the Helm test)")
    probe.add_argument("url", help="ws://host:port/ws/<project>")
    keygen = sub.add_parser("keygen", help="make an ES256 key pair: DIR/private.pem and DIR/jwks.json")
    keygen.add_argument("--out", type=Path, required=True, help="folder for the keys")
    token = sub.add_parser("token", help="print a signed token (development, tests, your own issuer)")
    token.add_argument("--key", type=Path, help="ES256 private key (from keygen)")
    token.add_argument("--secret", help="HS256 shared secret instead of a key (at least 32 bytes)")
    token.add_argument("--sub", required=True, help="the subject (who)")
    token.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="P=ROLE",
        help="a grant: PROJECT=owner|editor|viewer, a prefix like team-1:*=viewer, or *=editor (repeatable)",
    )
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument("--aud", default="canvas-sync", help="audience (default canvas-sync)")
    token.add_argument("--iss", help="issuer")
    admin.add_parser(sub)
    dev = sub.add_parser("dev", help="DynamoDB Local + table + N replicas, zero setup")
    dev.add_argument("--replicas", type=int, default=2, help="replicas to start (default 2)")
    dev.add_argument("--host", default="127.0.0.1", help="bind address of the replicas (default 127.0.0.1)")
    dev.add_argument(
        "--port", type=int, default=8080, help="port of the first replica; the others follow (default 8080)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("keygen", "token"):
        return _keys(args)
    if args.command == "projects":
        return admin.main(args)
    if args.command == "probe":
        from .probe import main as probe_main

        return probe_main(args.url)
    try:
        if args.command == "serve":
            settings = load_settings(host=args.host, port=args.port)
        else:
            settings = load_settings(serving=False)
    except ConfigError as error:
        print(f"canvas-sync: {error}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level.value, settings.replica_id)
    try:
        return _run(args, settings)
    except NoRegionError:
        print(
            "canvas-sync: no AWS region: set AWS_REGION (or CANVAS_DYNAMODB_ENDPOINT for DynamoDB Local)",
            file=sys.stderr,
        )
        return EXIT_CONFIG


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from .server import serve

        return serve(settings)
    if args.command == "create-table":
        return create_table(settings)
    if importlib.util.find_spec("canvas_sync.devtools") is None:  # the runtime image leaves it out
        print(
            "canvas-sync dev: the development tooling is not installed here (pip install canvas-sync)", file=sys.stderr
        )
        return EXIT_CONFIG
    from .devtools.dev import run_dev

    if args.replicas < 1:
        print("canvas-sync: --replicas must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    return run_dev(settings, args.replicas, args.host, args.port)


def _keys(args: argparse.Namespace) -> int:
    """keygen and token: no settings, no logging, just files and a line on stdout."""
    from .auth import check_secret
    from .tokens import generate_keys, mint, parse_grant, parse_ttl

    if args.command == "keygen":
        private, jwks = generate_keys(args.out)
        print(
            f"wrote {private} (keep it secret) and {jwks} (serve it, or CANVAS_AUTH_JWKS_URL=file://{jwks.resolve()})"
        )
        return 0
    try:
        if (args.key is None) == (args.secret is None):
            raise ValueError("give exactly one of --key and --secret")
        if args.secret is not None:
            check_secret(args.secret.encode())
        grants = dict(parse_grant(g) for g in args.project)
        if not grants:
            raise ValueError("give at least one --project P=owner|editor|viewer")
        print(
            mint(
                args.sub,
                grants,
                parse_ttl(args.ttl),
                private_key=args.key,
                secret=args.secret.encode() if args.secret else None,
                audience=args.aud,
                issuer=args.iss,
            )
        )
    except (ValueError, OSError) as error:
        print(f"canvas-sync token: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def create_table(settings: Settings) -> int:
    from .store import STORE_ERRORS, DynamoStore, make_client

    store = DynamoStore(make_client(settings.dynamodb_endpoint), settings.table)
    try:
        store.create_table()
        ready = store.table_ready()
    except STORE_ERRORS as error:
        print(f"canvas-sync: create-table failed: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"table {settings.table} is {'ACTIVE' if ready else 'not active yet'}")
    return 0 if ready else 1
