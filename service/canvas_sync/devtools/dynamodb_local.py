"""AWS's DynamoDB Local, fetched from the npm registry and run with the machine's Java.

The npm package ``amplify-dynamodb-simulator`` carries ``DynamoDBLocal.jar`` and its
native libraries in ``emulator/``. We download the tarball with ``npm pack`` once into a
cache folder, unpack only that folder, and start it on a free loopback port. Tests of
saving, loading and convergence and ``canvas-sync dev`` use it.

``python -m canvas_sync.devtools.dynamodb_local fetch`` provisions the cache (``make
test`` does); ``python -m canvas_sync.devtools.dynamodb_local run --port 8000`` runs one
in the foreground until Ctrl-C or SIGTERM, and stops the JVM with it.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .process import LocalProcess, StartError, cache_dir, free_port

NPM_PACKAGE = "amplify-dynamodb-simulator"
NPM_VERSION = "2.9.30"


class Unavailable(StartError):
    """DynamoDB Local cannot run here (no Java, no npm, or the download failed)."""


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


class DynamoDBLocal(LocalProcess):
    """One DynamoDB Local process on loopback; a context manager."""

    name = "DynamoDB Local"

    def __init__(self, port: int | None = None, db_path: Path | None = None, log_path: Path | None = None) -> None:
        super().__init__(log_path)
        self.port = port or free_port()
        self.db_path = db_path

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
        workdir = cache_dir() / "run"  # where it writes its own files, never the caller's folder
        workdir.mkdir(parents=True, exist_ok=True)
        self.launch(command, stdin=subprocess.DEVNULL, cwd=workdir)
        self.wait_until(lambda: _answers(self.endpoint), timeout, Unavailable)
        return self


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
    parser = argparse.ArgumentParser(
        prog="python -m canvas_sync.devtools.dynamodb_local", description=(__doc__ or "").splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download DynamoDB Local into the cache folder")
    run = sub.add_parser("run", help="run DynamoDB Local in the foreground (Ctrl-C or SIGTERM stops it)")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--db-path", type=Path, help="keep data in this folder (default: in memory)")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        try:
            print(ensure_installed())
        except Unavailable as error:
            print(f"dynamodb-local: {error}", file=sys.stderr)
            return 1
        return 0
    return _run(DynamoDBLocal(args.port, args.db_path))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(local: DynamoDBLocal) -> int:
    """Run in the foreground; Ctrl-C or SIGTERM (at any moment, the start included) stops
    the JVM too, so it is never left holding the port. 1 when it could not start or died."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        local.start()
        print(f"DynamoDB Local at {local.endpoint} (Ctrl-C or SIGTERM stops it)", flush=True)
        while local.running:
            time.sleep(0.5)
        print("dynamodb-local: the JVM exited on its own", file=sys.stderr)
        return 1
    except Unavailable as error:
        print(f"dynamodb-local: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the stop short
        local.stop()


if __name__ == "__main__":
    sys.exit(main())
