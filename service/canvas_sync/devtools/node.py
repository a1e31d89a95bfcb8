"""Node.js for the JavaScript client's integration tests: the ``ws`` package, fetched once.

The client itself has no dependencies; Node 20 has no WebSocket of its own, so the tests
that drive it against real replicas hand it ``WebSocket`` from the npm package ``ws``.
We install that one pinned version with ``npm install --prefix`` into a cache folder
(beside DynamoDB Local) and point ``NODE_PATH`` at its ``node_modules``; the test scripts
load it with ``createRequire``.

``python -m canvas_sync.devtools.node fetch`` provisions the cache (``make test`` does) and
prints the ``NODE_PATH`` value.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .process import cache_dir, staged

WS_PACKAGE = "ws"
WS_VERSION = "8.18.3"
MIN_NODE = 20


class Unavailable(RuntimeError):
    """The JavaScript tests cannot run here (no node or npm, too old a node, or the download failed)."""


def prefix(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "node" / f"{WS_PACKAGE}-{WS_VERSION}"


def node_path(cache: Path | None = None) -> Path:
    """The folder to put in ``NODE_PATH``: the cache's ``node_modules``."""
    return prefix(cache) / "node_modules"


def _installed(target: Path) -> bool:
    manifest = target / "node_modules" / WS_PACKAGE / "package.json"
    try:
        return bool(json.loads(manifest.read_text()).get("version") == WS_VERSION)
    except (OSError, ValueError):
        return False


def node() -> str:
    """The ``node`` executable; :class:`Unavailable` when missing or older than Node 20."""
    found = shutil.which("node")
    if found is None:
        raise Unavailable("node is not installed (Node 20+ runs the JavaScript client's tests)")
    result = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    version = result.stdout.strip().lstrip("v")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise Unavailable(f"cannot tell node's version from {result.stdout!r}") from None
    if major < MIN_NODE:
        raise Unavailable(f"node {version} is too old: the JavaScript client needs Node {MIN_NODE}+")
    return found


def ensure_installed(cache: Path | None = None) -> Path:
    """The ``node_modules`` folder holding ``ws``, installing it with npm if missing."""
    target = prefix(cache)
    if _installed(target):
        return target / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed, so the ws package cannot be fetched")
    with staged(target, _installed) as folder:
        result = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(folder),
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--silent",
                f"{WS_PACKAGE}@{WS_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise Unavailable(f"npm install {WS_PACKAGE}@{WS_VERSION} failed: {result.stderr.strip()[-500:]}")
        if not _installed(folder):
            raise Unavailable(f"npm install left no {WS_PACKAGE}@{WS_VERSION} in {folder}")
    return target / "node_modules"


def env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``NODE_PATH`` naming the cache."""
    out = dict(os.environ if base is None else base)
    modules = str(ensure_installed())
    out["NODE_PATH"] = os.pathsep.join(p for p in (modules, out.get("NODE_PATH", "")) if p)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m canvas_sync.devtools.node", description=(__doc__ or "").splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"install {WS_PACKAGE}@{WS_VERSION} into the cache folder; prints NODE_PATH")
    parser.parse_args(argv)
    try:
        print(ensure_installed())
    except Unavailable as error:
        print(f"node: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
