"""AWS's DynamoDB Local, fetched from the npm registry and run with the machine's Java.

The npm package ``amplify-dynamodb-simulator`` carries ``DynamoDBLocal.jar`` and its
native libraries in ``emulator/``. We download the tarball with ``npm pack`` once into a
cache folder, unpack only that folder, and start it on a free loopback port. Tests of
saving, loading and convergence and ``canvas-sync dev`` use it.

``python -m canvas_sync.dynamodb_local fetch`` provisions the cache (``make test`` does);
``python -m canvas_sync.dynamodb_local run --port 8000`` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

NPM_PACKAGE = "amplify-dynamodb-simulator"
NPM_VERSION = "2.9.30"


class Unavailable(RuntimeError):
    """DynamoDB Local cannot run here (no Java, no npm, or the download failed)."""


def cache_dir() -> Path:
    base = os.environ.get("CANVAS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "canvas-sync"
    )
    return Path(base)


def emulator_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / f"dynamodb-local-{NPM_VERSION}" / "emulator"


def ensure_installed(cache: Path | None = None) -> Path:
    """The folder holding DynamoDBLocal.jar, downloading it with npm if missing."""
    target = emulator_dir(cache)
    if (target / "DynamoDBLocal.jar").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed, so DynamoDB Local cannot be fetched")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent) as tmp:
        result = subprocess.run(
            [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise Unavailable(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed: {result.stderr.strip()[-500:]}")
        tarball = next(Path(tmp).glob("*.tgz"))
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/emulator/")]
            archive.extractall(unpacked, members=members, filter="data")
        staged = unpacked / "package" / "emulator"
        if not (staged / "DynamoDBLocal.jar").is_file():
            raise Unavailable(f"{NPM_PACKAGE}@{NPM_VERSION} has no emulator/DynamoDBLocal.jar")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(target)  # atomic: a concurrent fetch either wins or finds it done
        except OSError:
            if not (target / "DynamoDBLocal.jar").is_file():
                raise
    return target


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class DynamoDBLocal:
    """One DynamoDB Local process on loopback; a context manager."""

    def __init__(self, port: int | None = None, db_path: Path | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.db_path = db_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise Unavailable("java is not installed, so DynamoDB Local cannot run")
        emulator = ensure_installed()
        storage = ["-sharedDb", "-dbPath", str(self.db_path)] if self.db_path else ["-inMemory"]
        return [
            java,
            f"-Djava.library.path={emulator / 'DynamoDBLocal_lib'}",
            "-Xms64m",
            "-Xmx1g",
            "-jar",
            str(emulator / "DynamoDBLocal.jar"),
            "-disableTelemetry",
            *storage,
            "-port",
            str(self.port),
        ]

    def start(self, timeout: float = 60.0) -> DynamoDBLocal:
        command = self.command()
        if self.db_path:
            self.db_path.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        workdir = cache_dir() / "run"  # where it writes its own files, never the caller's folder
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"DynamoDB Local exited with code {self.process.returncode} at start")
            if _answers(self.endpoint):
                return self
            time.sleep(0.1)
        self.stop()
        raise Unavailable(f"DynamoDB Local did not answer on {self.endpoint} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def _answers(endpoint: str) -> bool:
    """Any HTTP answer (DynamoDB answers a bare GET with 400) means it is listening."""
    try:
        urllib.request.urlopen(endpoint, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canvas_sync.dynamodb_local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download DynamoDB Local into the cache folder")
    run = sub.add_parser("run", help="run DynamoDB Local in the foreground")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--db-path", type=Path, help="keep data in this folder (default: in memory)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(ensure_installed())
            return 0
        local = DynamoDBLocal(args.port, args.db_path).start()
    except Unavailable as error:
        print(f"dynamodb-local: {error}", file=sys.stderr)
        return 1
    print(f"DynamoDB Local at {local.endpoint} (Ctrl-C stops it)")
    try:
        assert local.process is not None
        local.process.wait()
    except KeyboardInterrupt:
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
