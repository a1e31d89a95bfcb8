"""Do replicas hold the same canvases? The one convergence check for Locust, tests and benchmarks.

Converged means: every replica's ``GET /projects/{p}/objects`` returns the same bytes for
every project (the contract makes equal states equal bytes), and no replica has anything
unsaved for it (``/projects/{p}/status``), so the table holds it too. Standard library
only: it asks replicas over HTTP, wherever it runs (the Locust image among them).
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any


def fetch(url: str, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return bytes(response.read())


def objects(url: str, project: str, token: str | None = None) -> bytes:
    """One replica's canonical JSON of a project."""
    return fetch(f"{url}/projects/{project}/objects", token)


def unsettled(urls: list[str], project: str, token: str | None = None) -> bool:
    """True while the replicas differ on the project or any still has something unsaved."""
    if len({objects(u, project, token) for u in urls}) > 1:
        return True
    return any(json.loads(fetch(f"{u}/projects/{project}/status", token))["dirty_objects"] for u in urls)


def mismatches(urls: list[str], project: str, token: str | None = None) -> list[dict[str, Any]]:
    """Objects that differ between replicas, with each replica's copy."""
    views = {u: {o["id"]: o for o in json.loads(objects(u, project, token))["objects"]} for u in urls}
    ids = sorted(set().union(*views.values()))
    return [
        {"project": project, "id": oid, "copies": {u: views[u].get(oid) for u in urls}}
        for oid in ids
        if len({json.dumps(views[u].get(oid), sort_keys=True) for u in urls}) > 1
    ]


def check_convergence(
    urls: list[str], projects: list[str], timeout: float, poll: float = 0.1, token: str | None = None
) -> dict[str, Any]:
    """Poll until every project has converged or ``timeout`` passes; a JSON-able report.
    ``token``: a bearer token that may view the projects, where authentication is on."""
    started = time.monotonic()
    pending = list(projects)
    last_error: str | None = None
    while True:
        try:
            pending = [p for p in pending if unsettled(urls, p, token)]
            last_error = None
        except OSError as error:
            last_error = str(error)
        elapsed = time.monotonic() - started
        if not pending:
            return {
                "converged": True,
                "seconds": round(elapsed, 3),
                "replicas": urls,
                "projects": len(projects),
                "mismatches": [],
            }
        if elapsed > timeout:
            found = [m for p in pending for m in mismatches(urls, p, token)] if last_error is None else []
            return {
                "converged": False,
                "seconds": round(elapsed, 3),
                "replicas": urls,
                "projects": len(projects),
                "pending": pending,
                "mismatches": found[:20],
                "error": last_error,
            }
        time.sleep(poll)
