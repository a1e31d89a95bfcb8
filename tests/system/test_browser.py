"""The demo page in a real browser: two pages on two replicas of one project.

Playwright for Python drives the system Chromium (Debian package ``chromium``;
Playwright's own browser download cannot work here). Screenshots of each step go to
``test-output/browser/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.devtools.redis_local import RedisServer

from tests.helpers import OUTPUT, Replica, missing, wait_until

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
    for asset, kind in (("app.js", "javascript"), ("app.css", "css")):
        with urllib.request.urlopen(f"{replica.url}/static/{asset}", timeout=5) as response:
            assert kind in response.headers["Content-Type"] and response.read()


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
