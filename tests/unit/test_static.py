"""The demo page ships copies of the JavaScript client (the image holds only the Python
package, not ``clients/js``): they must stay byte-for-byte what ``clients/js`` holds.

After a change to the client: ``cp clients/js/index.js service/canvas_sync/static/canvas-client.js``
and ``cp clients/js/indexeddb.js service/canvas_sync/static/canvas-client-indexeddb.js``.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT

STATIC = ROOT / "service" / "canvas_sync" / "static"
CLIENT = ROOT / "clients" / "js"
COPIES = {
    "canvas-client.js": "index.js",
    "canvas-client-indexeddb.js": "indexeddb.js",
}


@pytest.mark.parametrize(("copy", "source"), sorted(COPIES.items()))
def test_the_served_client_is_the_client(copy: str, source: str) -> None:
    served, original = (STATIC / copy).read_bytes(), (CLIENT / source).read_bytes()
    assert served == original, (
        f"service/canvas_sync/static/{copy} differs from clients/js/{source}: "
        f"cp clients/js/{source} service/canvas_sync/static/{copy}"
    )


def test_the_copies_stand_alone() -> None:
    """Served from /static/ they cannot reach anything else: no imports at all."""
    for copy in COPIES:
        text = (STATIC / copy).read_text()
        assert not re.search(r"^\s*import\s", text, re.MULTILINE), copy


def test_the_page_is_built_on_the_served_client() -> None:
    app = (STATIC / "app.js").read_text()
    assert 'from "/static/canvas-client.js"' in app
    assert 'from "/static/canvas-client-indexeddb.js"' in app
    assert "new WebSocket" not in app, "the page's connection is the client's"
    html = (STATIC / "index.html").read_text()
    for testid in ("status", "saving", "queued", "replica", "me", "board", "undo", "redo"):
        assert f'data-testid="{testid}"' in html, testid


def test_the_package_data_ships_every_static_file() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"static/*"' in pyproject


def test_the_client_readme_shows_the_example_as_it_is() -> None:
    """The README's walk-through quotes clients/js/example in full; the browser test runs the files."""
    readme = (CLIENT / "README.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", readme, re.DOTALL)
    for language, name in (("html", "index.html"), ("js", "app.js")):
        source = (CLIENT / "example" / name).read_text()
        assert (language, source) in blocks, f"README.md's copy of example/{name} differs from the file"
