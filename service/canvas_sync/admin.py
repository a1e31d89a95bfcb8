"""``canvas-sync projects ...``: the projects API from a shell, for scripts and operators.

Every subcommand is one or a few HTTP calls to a replica (``--url``, ``CANVAS_URL``) with
a token (``--token``, ``CANVAS_TOKEN``), and prints the answer as one line of JSON on
stdout: ``export`` prints what ``import`` takes, so ``export | import`` copies a project.
Exit codes: 0 done, 1 refused or unreachable (the answer on stderr), 2 a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_REFUSED = 1
EXIT_USAGE = 2


class Refused(Exception):
    """The replica answered with an error (or could not be reached)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class Api:
    """The projects API over HTTP, with the standard library alone."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = {"error": "http_error", "message": raw.decode(errors="replace")[:500]}
            raise Refused(error.code, answer) from None
        except OSError as error:
            raise Refused(0, {"error": "unreachable", "message": f"{self.url}: {error}"}) from None

    def project(self, project: str, tail: str = "") -> str:
        return f"/projects/{urllib.parse.quote(project, safe='')}{tail}"


def add_parser(sub: Any) -> None:
    """``projects`` and its subcommands, under the ``canvas-sync`` parser."""
    projects = sub.add_parser("projects", help="list, export, import, delete, version and restore projects over HTTP")
    projects.add_argument("--url", help=f"a replica's URL (CANVAS_URL, default {DEFAULT_URL})")
    projects.add_argument("--token", help="a bearer token (CANVAS_TOKEN); not needed with CANVAS_AUTH=off")
    commands = projects.add_subparsers(dest="action", required=True)
    listing = commands.add_parser("list", help="the projects the token covers, in id order")
    listing.add_argument("--prefix", default="", help="only ids starting with this")
    listing.add_argument("--limit", type=int, default=100, help="a page of at most this many (1 to 1000)")
    listing.add_argument("--cursor", help="the 'next' of an earlier page")
    listing.add_argument("--all", action="store_true", help="follow every page and print them as one")
    for name, text in (("delete", "delete a project everywhere (owner)"), ("export", "print a project's objects")):
        command = commands.add_parser(name, help=text)
        command.add_argument("project")
    importing = commands.add_parser("import", help="make a project hold exactly a file's objects (owner)")
    importing.add_argument("project")
    importing.add_argument("file", help="JSON: what export prints, {'objects': [...]}, or a bare array; - for stdin")
    versions = commands.add_parser("versions", help="a project's versions, newest first, or one with its objects")
    versions.add_argument("project")
    versions.add_argument("version", nargs="?")
    snapshot = commands.add_parser("snapshot", help="keep a version of a project now (editor)")
    snapshot.add_argument("project")
    snapshot.add_argument("--name", default="", help="what to call it")
    restore = commands.add_parser("restore", help="bring a version back as one new change (owner)")
    restore.add_argument("project")
    restore.add_argument("version")


def main(args: argparse.Namespace) -> int:
    api = Api(args.url or os.environ.get("CANVAS_URL") or DEFAULT_URL, args.token or os.environ.get("CANVAS_TOKEN"))
    try:
        out = run(api, args)
    except Refused as refused:
        print(json.dumps({"status": refused.status, **_as_dict(refused.body)}, sort_keys=True), file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, ValueError) as error:
        print(f"canvas-sync projects: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(out, sort_keys=True))
    return 0


def run(api: Api, args: argparse.Namespace) -> Any:
    action = args.action
    if action == "list":
        query = {"prefix": args.prefix or None, "limit": args.limit, "cursor": args.cursor}
        page = api.call("GET", "/projects", query=query)
        if not args.all:
            return page
        projects = list(page["projects"])
        while page["next"] is not None:
            page = api.call("GET", "/projects", query={**query, "cursor": page["next"]})
            projects += page["projects"]
        return {"projects": projects, "next": None}
    if action == "delete":
        api.call("DELETE", api.project(args.project))
        return {"project": args.project, "deleted": True}
    if action == "export":
        return api.call("GET", api.project(args.project, "/objects"))
    if action == "import":
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        given = json.loads(text)
        objects = given if isinstance(given, list) else given.get("objects") if isinstance(given, dict) else None
        if not isinstance(objects, list):
            raise ValueError("the file must hold a JSON array of objects or {'objects': [...]}")
        return api.call("PUT", api.project(args.project, "/objects"), {"objects": objects})
    if action == "versions":
        tail = f"/versions/{urllib.parse.quote(args.version, safe='')}" if args.version else "/versions"
        return api.call("GET", api.project(args.project, tail))
    if action == "snapshot":
        return api.call("POST", api.project(args.project, "/versions"), {"name": args.name})
    version = urllib.parse.quote(args.version, safe="")
    return api.call("POST", api.project(args.project, f"/versions/{version}/restore"), {})


def _as_dict(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"body": body}
