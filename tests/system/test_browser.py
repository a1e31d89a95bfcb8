"""The demo page in a real browser: two pages on two replicas of one project.

Playwright for Python drives the system Chromium (Debian package ``chromium``;
Playwright's own browser download cannot work here). Screenshots of each step go to
``test-output/browser/``.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.devtools.redis_local import RedisServer

from tests.helpers import OUTPUT, ROOT, Replica, missing, wait_until

pytestmark = pytest.mark.dynamodb_local

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = OUTPUT / "browser"
FAST = {"autosave_interval": 0.3, "sync_interval": 0.2}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing("Chromium is not installed (Debian package chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


def shapes(page: Any) -> list[str]:
    return page.eval_on_selector_all("#board [data-id]", "els => els.map(e => e.dataset.id)")


def open_page(browser: Any, replica: Replica, project: str, name: str | None = None) -> Any:
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.on("dialog", lambda dialog: dialog.accept())  # "leave with unsaved changes?": yes
    page.goto(f"{replica.url}/?project={project}" + (f"&name={name}" if name else ""))
    page.wait_for_selector('[data-testid="status"][data-state="online"]', timeout=10_000)
    return page


def test_two_pages_on_two_replicas_share_one_canvas(browser: Any, replicas: Any) -> None:
    a, b = replicas("replica-a", **FAST), replicas("replica-b", **FAST)
    page_a, page_b = open_page(browser, a, "e2e"), open_page(browser, b, "e2e")
    assert page_a.text_content('[data-testid="replica"]') == "replica-a"
    assert page_b.text_content('[data-testid="replica"]') == "replica-b"

    # a rectangle drawn on A appears on B
    page_a.click("button[data-add=rect]")
    wait_until(lambda: len(shapes(page_b)) == 1, what="the shape on B")
    (shape_id,) = shapes(page_b)
    page_a.screenshot(path=SHOTS / "1-drawn-on-a.png")
    page_b.screenshot(path=SHOTS / "1-seen-on-b.png")

    # a drag on B moves it on A
    element = f'[data-id="{shape_id}"]'
    before = float(page_a.get_attribute(element, "data-x"))
    box = page_b.locator(element).bounding_box()
    page_b.mouse.move(box["x"] + 20, box["y"] + 20)
    page_b.mouse.down()
    for step in range(1, 11):
        page_b.mouse.move(box["x"] + 20 + 12 * step, box["y"] + 20 + 6 * step)
        time.sleep(0.02)
    page_b.mouse.up()
    moved_on_b = float(page_b.get_attribute(element, "data-x"))
    assert moved_on_b > before + 50
    wait_until(lambda: float(page_a.get_attribute(element, "data-x")) == moved_on_b, what="the drag on A")
    page_a.screenshot(path=SHOTS / "2-dragged-on-b-seen-on-a.png")

    # recolour on A, seen on B
    page_a.click(element)
    page_a.click('#palette button[data-colour="#43a047"]')
    wait_until(lambda: page_b.get_attribute(element, "fill") == "#43a047", what="the colour on B")

    # Delete key on A removes it on both
    page_a.click(element)
    page_a.keyboard.press("Delete")
    wait_until(lambda: shapes(page_a) == [] and shapes(page_b) == [], what="the delete on both")
    page_b.screenshot(path=SHOTS / "3-deleted.png")

    # two shapes that must survive a restart of every replica
    page_a.click("button[data-add=ellipse]")
    page_b.click("button[data-add=text]")
    wait_until(lambda: len(shapes(page_a)) == 2 and len(shapes(page_b)) == 2, what="two shapes on both")
    wait_until(lambda: all(r.objects("e2e") and len(r.objects("e2e")) == 2 for r in (a, b)), what="replicas agree")

    # a dropped connection: the page says so, keeps what is drawn meanwhile, and sends it later
    for r in (a, b):
        assert r.terminate() == 0
    page_a.wait_for_selector('[data-testid="status"][data-state="offline"]', timeout=10_000)
    page_a.click("button[data-add=rect]")  # drawn while offline
    assert len(shapes(page_a)) == 3
    assert page_a.get_attribute('[data-testid="queued"]', "data-count") == "1"
    page_a.screenshot(path=SHOTS / "4-offline-with-a-queued-edit.png")
    restarted = time.monotonic()
    for r in (a, b):
        r.start()
    page_a.wait_for_selector('[data-testid="status"][data-state="online"]', timeout=15_000)
    reconnect_s = time.monotonic() - restarted
    wait_until(
        lambda: page_a.get_attribute('[data-testid="queued"]', "data-count") == "0", what="the queued edit acked"
    )
    wait_until(lambda: len(shapes(page_b)) == 3, timeout=15, what="the queued edit on B")
    print(f"page back online {reconnect_s:.2f}s after the replicas restarted; the queued edit was delivered")

    # after the restart a reloaded page shows the saved canvas
    page_b.reload()
    page_b.wait_for_selector('[data-testid="status"][data-state="online"]', timeout=10_000)
    wait_until(lambda: len(shapes(page_b)) == 3, what="the saved canvas after reload")
    page_b.screenshot(path=SHOTS / "5-reloaded-after-restart.png")
    (SHOTS / "reconnect.txt").write_text(f"{reconnect_s:.2f}\n")


def test_cursors_and_drags_live_across_replicas_with_the_relay(
    browser: Any, replicas: Any, redis_server: RedisServer
) -> None:
    """With the relay, two pages on two replicas see each other's cursor and drags at once
    (auto-save an hour away: the table plays no part)."""
    slow = {"autosave_interval": 3600, "sync_interval": 3600, "redis_url": redis_server.url, "relay_heartbeat": 0.2}
    a, b = replicas("replica-a", **slow), replicas("replica-b", **slow)
    page_a, page_b = open_page(browser, a, "live", "Alice"), open_page(browser, b, "live", "Bob")
    assert page_b.text_content('[data-testid="me"]') == "Bob"
    page_a.mouse.move(300, 300)
    page_a.mouse.move(320, 310)
    page_b.wait_for_selector('[data-cursor][data-name="Alice"]', timeout=5_000)
    page_b.mouse.move(500, 200)
    page_a.wait_for_selector('[data-cursor][data-name="Bob"]', timeout=5_000)

    page_a.click("button[data-add=rect]")
    wait_until(lambda: len(shapes(page_b)) == 1, what="the shape on B, through the relay")
    (shape_id,) = shapes(page_b)
    element = f'[data-id="{shape_id}"]'
    page_b.wait_for_selector(f'{element}[data-selected-by="Alice"]', timeout=5_000)  # A's selection shows on B
    box = page_a.locator(element).bounding_box()
    page_a.mouse.move(box["x"] + 20, box["y"] + 20)
    page_a.mouse.down()
    for step in range(1, 11):
        page_a.mouse.move(box["x"] + 20 + 10 * step, box["y"] + 20 + 5 * step)
        time.sleep(0.02)
    page_a.mouse.up()
    moved = float(page_a.get_attribute(element, "data-x"))
    wait_until(lambda: float(page_b.get_attribute(element, "data-x")) == moved, what="the drag on B")
    page_b.screenshot(path=SHOTS / "6-cursor-and-selection-from-another-replica.png")
    page_a.close()
    page_b.wait_for_selector('[data-cursor][data-name="Alice"]', state="detached", timeout=5_000)


def test_the_page_is_served_with_its_assets(replicas: Any) -> None:
    import urllib.request

    replica = replicas("replica-page")
    html = urllib.request.urlopen(f"{replica.url}/?project=x", timeout=5).read().decode()
    assert '<svg id="board"' in html and "/static/app.js" in html
    assert "canvas-client.js" in urllib.request.urlopen(f"{replica.url}/static/app.js", timeout=5).read().decode()
    for asset, kind in (
        ("app.js", "javascript"),
        ("app.css", "css"),
        ("canvas-client.js", "javascript"),
        ("canvas-client-indexeddb.js", "javascript"),
    ):
        with urllib.request.urlopen(f"{replica.url}/static/{asset}", timeout=5) as response:
            assert kind in response.headers["Content-Type"] and response.read()


def test_offline_edits_survive_a_reload_with_indexeddb(browser: Any, replicas: Any) -> None:
    """Edits made offline wait in IndexedDB: after a reload, still offline, they are on the
    canvas again, and once the connection is back they are sent and saved. "Offline" is the
    page's WebSockets cut and refused (Playwright's route_web_socket); HTTP still works, so
    the page itself can reload."""
    replica = replicas("replica-a", **FAST)
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    offline = {"on": False}
    routes: list[tuple[Any, Any]] = []

    def route(ws: Any) -> None:
        if offline["on"]:
            ws.close(code=1001, reason="offline")
            return
        routes.append((ws, ws.connect_to_server()))

    context.route_web_socket(re.compile(r".*/ws/.*"), route)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{replica.url}/?project=offline")
    page.wait_for_selector('[data-testid="status"][data-state="online"]', timeout=10_000)
    print(f"subprotocol through the route: {page.evaluate('window.canvasClient.protocol')}")
    saving = '[data-testid="saving"]'
    assert page.get_attribute(saving, "data-state") == "saved"
    assert page.text_content(saving) == "all changes saved"

    page.click("button[data-add=rect]")
    wait_until(lambda: page.get_attribute(saving, "data-state") == "saved", timeout=20, what="the rectangle saved")
    assert len(replica.objects("offline")) == 1

    # offline: the sockets drop and new ones are refused
    offline["on"] = True
    for page_side, server_side in routes:
        page_side.close(code=1001, reason="offline")
        server_side.close()
    page.wait_for_selector('[data-testid="status"][data-state="offline"]', timeout=10_000)
    (rect_id,) = shapes(page)
    page.click(f'[data-id="{rect_id}"]')  # before new shapes land at random places, maybe over it
    page.click('#palette button[data-colour="#43a047"]')  # an update, offline
    page.click("button[data-add=ellipse]")
    page.click("button[data-add=text]")
    made_offline = sorted(set(shapes(page)) - {rect_id})
    assert len(shapes(page)) == 3
    wait_until(lambda: page.get_attribute(saving, "data-state") == "unsaved", timeout=20, what="unsaved shown")
    assert page.get_attribute(saving, "data-count") == "3"
    assert "kept on this device" in page.text_content(saving)
    page.screenshot(path=SHOTS / "7-offline-edits-before-reload.png")

    page.reload()  # still offline
    page.wait_for_selector('[data-testid="status"][data-state="offline"]', timeout=10_000)
    # what this page made offline is back (the rest of the canvas comes with the snapshot)
    wait_until(lambda: sorted(shapes(page)) == made_offline, timeout=20, what="the offline edits back after the reload")
    assert page.get_attribute(saving, "data-count") == "3"
    assert len(replica.objects("offline")) == 1, "nothing reached the server yet"
    page.screenshot(path=SHOTS / "8-offline-edits-after-reload.png")

    # online again: the client reconnects at once on the browser's online event
    offline["on"] = False
    page.evaluate("window.dispatchEvent(new Event('online'))")
    page.wait_for_selector('[data-testid="status"][data-state="online"]', timeout=15_000)
    wait_until(lambda: page.get_attribute(saving, "data-state") == "saved", timeout=20, what="everything saved")
    assert sorted(shapes(page)) == sorted([rect_id, *made_offline])
    assert page.get_attribute(f'[data-id="{rect_id}"]', "fill") == "#43a047"
    objects = {o["id"]: o for o in replica.objects("offline")}
    assert len(objects) == 3 and objects[rect_id]["fill"] == "#43a047"
    assert page.evaluate("window.canvasClient.unsaved") == 0

    # a reload now has nothing left to send, and a fresh browser sees the same canvas
    page.reload()
    page.wait_for_selector('[data-testid="status"][data-state="online"]', timeout=10_000)
    assert page.get_attribute(saving, "data-count") == "0"
    other = open_page(browser, replica, "offline")
    wait_until(lambda: sorted(shapes(other)) == sorted(objects), timeout=20, what="the canvas in another browser")
    context.close()


def test_undo_and_redo_buttons(browser: Any, replicas: Any) -> None:
    """Undo takes back this page's own change (a drag is one step), never the other page's."""
    replica = replicas("replica-a", **FAST)
    mine, theirs = open_page(browser, replica, "undo"), open_page(browser, replica, "undo")
    assert mine.is_disabled('[data-testid="undo"]') and mine.is_disabled('[data-testid="redo"]')
    mine.click("button[data-add=rect]")
    wait_until(lambda: len(shapes(theirs)) == 1, timeout=20, what="the shape on the other page")
    (shape_id,) = shapes(mine)
    element = f'[data-id="{shape_id}"]'
    start = float(mine.get_attribute(element, "data-x"))
    box = mine.locator(element).bounding_box()
    mine.mouse.move(box["x"] + 20, box["y"] + 20)
    mine.mouse.down()
    for step in range(1, 11):
        mine.mouse.move(box["x"] + 20 + 10 * step, box["y"] + 20)
        time.sleep(0.02)
    mine.mouse.up()
    moved = float(mine.get_attribute(element, "data-x"))
    assert moved > start + 50
    theirs.click(element)
    theirs.click('#palette button[data-colour="#e53935"]')  # their change, later
    wait_until(lambda: mine.get_attribute(element, "fill") == "#e53935", timeout=20, what="their colour on my page")

    mine.click('[data-testid="undo"]')  # the whole drag, in one step
    wait_until(lambda: float(mine.get_attribute(element, "data-x")) == start, timeout=20, what="the drag undone")
    wait_until(
        lambda: float(theirs.get_attribute(element, "data-x")) == start, timeout=20, what="the undo on their page"
    )
    assert mine.get_attribute(element, "fill") == "#e53935", "their colour stays"
    assert not mine.is_disabled('[data-testid="redo"]')
    mine.keyboard.press("Control+Shift+Z")
    wait_until(
        lambda: float(theirs.get_attribute(element, "data-x")) == moved, timeout=20, what="the redo on their page"
    )
    # an own shape nobody else touched: undo takes its create back, on every page
    mine.click("button[data-add=ellipse]")
    wait_until(lambda: len(shapes(theirs)) == 2, timeout=20, what="the second shape on the other page")
    mine.keyboard.press("Control+Z")
    wait_until(lambda: shapes(theirs) == [shape_id], timeout=20, what="the create undone everywhere")
    assert mine.get_attribute(element, "fill") == "#e53935"


@pytest.fixture
def example_origin() -> Iterator[str]:
    """clients/js served as an app's own static files (another origin than the replicas')."""
    handler = functools.partial(QuietHandler, directory=str(ROOT / "clients" / "js"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_the_client_readme_example_works(
    browser: Any, replicas: Any, redis_server: RedisServer, example_origin: str
) -> None:
    """clients/js/example, the README's walk-through, from its own origin against two replicas
    (relayed, as ``make run`` starts them): rectangles drawn and dragged on one page show on
    the other, with cursors, saving and undo."""
    settings = {**FAST, "allowed_origins": example_origin, "redis_url": redis_server.url, "relay_heartbeat": 0.2}
    a, b = replicas("replica-a", **settings), replicas("replica-b", **settings)

    def open_example(replica: Replica, name: str) -> Any:
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.on("dialog", lambda dialog: dialog.accept())
        server = replica.url.replace("http", "ws", 1)
        page.goto(f"{example_origin}/example/index.html?server={server}&project=example&name={name}")
        page.wait_for_selector('#status[data-status="open"]', timeout=10_000)
        return page

    ann, bob = open_example(a, "Ann"), open_example(b, "Bob")
    ann.click("#add")
    wait_until(lambda: len(shapes(bob)) == 1, timeout=20, what="Ann's rectangle on Bob's page")
    (shape_id,) = shapes(bob)
    element = f'[data-id="{shape_id}"]'
    start = float(bob.get_attribute(element, "x"))
    box = bob.locator(element).bounding_box()
    bob.mouse.move(box["x"] + 10, box["y"] + 10)
    bob.mouse.down()
    for step in range(1, 9):
        bob.mouse.move(box["x"] + 10 + 12 * step, box["y"] + 10)
        time.sleep(0.02)
    bob.mouse.up()
    moved = float(bob.get_attribute(element, "x"))
    assert moved > start + 40
    wait_until(lambda: float(ann.get_attribute(element, "x")) == moved, timeout=20, what="Bob's drag on Ann's page")
    ann.wait_for_selector('[data-cursor]:text("Bob")', timeout=5_000)
    wait_until(lambda: bob.text_content("#saving") == "all changes saved", timeout=20, what="Bob's drag saved")
    bob.click("#undo")  # the drag, one step
    wait_until(
        lambda: float(ann.get_attribute(element, "x")) == start, timeout=20, what="the undone drag on Ann's page"
    )
    ann.screenshot(path=SHOTS / "9-client-example.png")
    assert wait_until(lambda: a.objects("example") == b.objects("example"), timeout=20, what="the replicas agree") >= 0


def test_side_by_side_screenshot(browser: Any, replicas: Any, tmp_path: Path) -> None:
    """The README's picture: two browsers on two replicas of one canvas."""
    a, b = replicas("replica-1", **FAST), replicas("replica-2", **FAST)
    page_a, page_b = open_page(browser, a, "readme"), open_page(browser, b, "readme")
    for kind in ("rect", "ellipse", "text", "rect"):
        page_a.click(f"button[data-add={kind}]")
    page_b.click('#palette button[data-colour="#e53935"]')
    page_b.click("button[data-add=ellipse]")
    wait_until(lambda: len(shapes(page_a)) == 5 and len(shapes(page_b)) == 5, what="five shapes on both")
    frame = tmp_path / "side-by-side.html"
    frame.write_text(
        "<body style='margin:0;display:flex;gap:8px;background:#888'>"
        f"<iframe src='{a.url}/?project=readme' style='width:640px;height:480px;border:0'></iframe>"
        f"<iframe src='{b.url}/?project=readme' style='width:640px;height:480px;border:0'></iframe></body>"
    )
    page = browser.new_page(viewport={"width": 1288, "height": 480})
    page.goto(frame.as_uri())
    wait_until(lambda: all(len(f.query_selector_all("#board [data-id]")) == 5 for f in page.frames[1:]), what="frames")
    page.screenshot(path=SHOTS / "two-replicas.png")
