"""The inspector page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium): a row written by a Python client shows within 1 s, a cell typed into the
page reaches the Python client, and a screenshot is saved (to ``tmp_path``, and to
``$LOCALSYNC_SCREENSHOT_DIR/inspector.png`` when that variable is set: the README picture)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localsync import create_mergeable_store
from localsync.ws.client import create_ws_synchronizer
from localsync.ws.inspector import Inspector, RoomsSource
from localsync.ws.server import create_ws_server
from tests.helpers import eventually, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)",
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

#: the issue's requirement: a row written by a client shows in the page within this
SHOW_WITHIN_SECONDS = 1.0
TOKEN = "browser-test-token"


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,820",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = webdriver.ChromeService(CHROMEDRIVER)
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


def _row_selector(table: str, row: str) -> str:
    return f'section[data-table="{table}"] tr[data-row="{row}"]'


def _cell_texts(browser: Any, table: str, row: str) -> list[str] | None:
    """The values shown in a row's inputs, or None while the row is not shown."""
    rows = browser.find_elements(By.CSS_SELECTOR, _row_selector(table, row))
    if not rows:
        return None
    return [i.get_attribute("value") for i in rows[0].find_elements(By.TAG_NAME, "input")]


def _type_into(browser: Any, table: str, row: str, cell: str, text: str) -> None:
    """Type ``text`` over a cell's field in the page and press Enter, as a user would."""
    selector = _row_selector(table, row) + f' td[data-cell="{cell}"] input'
    field = browser.find_element(By.CSS_SELECTOR, selector)
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(text, Keys.ENTER)


def test_page_shows_writes_live_and_edits_sync(driver: Any, tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await create_ws_server(port=0, token=TOKEN)
        inspector = Inspector(RoomsSource(server))
        server.add_route(inspector.route())
        store = create_mergeable_store()
        synchronizer = await create_ws_synchronizer(store, f"{server.url}/shop?token={TOKEN}")
        await synchronizer.start_sync()
        try:
            store.set_row("pets", "fido", {"species": "dog", "name": "Fido", "legs": 4})
            store.set_row("pets", "felix", {"species": "cat", "name": "Felix", "legs": 4})
            store.set_row("orders", "o-1", {"pet": "fido", "qty": 2, "paid": True})
            store.set_values({"open": True, "motto": "<b>not bold</b>"})
            url = f"http://127.0.0.1:{server.port}/_inspect/?token={TOKEN}"
            await asyncio.to_thread(driver.get, url)

            # the room is listed with its one client (not the inspector's follower): click it
            deadline = time.monotonic() + 30
            listed: list[Any] = []
            while not listed:
                assert time.monotonic() < deadline, "the room was never listed"
                await asyncio.sleep(0.05)
                listed = await asyncio.to_thread(
                    driver.find_elements, By.CSS_SELECTOR, '#rooms li[data-room="shop"]'
                )
            assert "1 client" in await asyncio.to_thread(lambda: listed[0].text)
            await asyncio.to_thread(listed[0].click)

            async def shown(table: str, row: str) -> list[str] | None:
                return await asyncio.to_thread(_cell_texts, driver, table, row)

            # the page is live: the snapshot is shown (no time limit on the first load)
            deadline = time.monotonic() + 30
            while await shown("pets", "felix") is None:
                assert time.monotonic() < deadline, "the snapshot never showed"
                await asyncio.sleep(0.05)
            assert await shown("pets", "fido") == ["dog", "Fido", "4"]
            motto = await asyncio.to_thread(
                driver.find_element, By.CSS_SELECTOR, 'tr[data-value="motto"] input'
            )
            # data is text, never markup
            assert await asyncio.to_thread(motto.get_attribute, "value") == "<b>not bold</b>"
            bolds = await asyncio.to_thread(driver.find_elements, By.TAG_NAME, "b")
            assert bolds == []

            # a row written by the Python client shows within 1 s
            written = time.monotonic()
            store.set_row("pets", "nemo", {"species": "fish", "name": "Nemo", "legs": 0})
            latency = None
            while time.monotonic() - written < SHOW_WITHIN_SECONDS:
                if await shown("pets", "nemo") == ["fish", "Nemo", "0"]:
                    latency = time.monotonic() - written
                    break
                await asyncio.sleep(0.01)
            print(f"\ninspector: row shown {latency} s after the write")
            assert latency is not None, f"row not shown within {SHOW_WITHIN_SECONDS} s"

            # a cell typed into the page (Enter) reaches the Python client, with its type
            await asyncio.to_thread(_type_into, driver, "pets", "nemo", "legs", "2")
            await eventually(lambda: store.get_cell("pets", "nemo", "legs") == 2, timeout=15)
            await asyncio.to_thread(_type_into, driver, "pets", "felix", "name", "Felix the cat")
            await eventually(
                lambda: store.get_cell("pets", "felix", "name") == "Felix the cat", timeout=15
            )
            store.set_value("visitors", 12)
            while (
                await asyncio.to_thread(
                    driver.find_elements, By.CSS_SELECTOR, 'tr[data-value="visitors"]'
                )
                == []
            ):
                assert time.monotonic() < deadline + 30, "the value never showed"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # (the flash of changed cells fades)

            screenshot = tmp_path / "inspector.png"
            assert await asyncio.to_thread(driver.save_screenshot, str(screenshot))
            assert screenshot.stat().st_size > 10_000
            target = os.environ.get("LOCALSYNC_SCREENSHOT_DIR")
            if target:
                Path(target).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(screenshot, Path(target) / "inspector.png")
        finally:
            await synchronizer.destroy()
            await inspector.close()
            await server.destroy()

    run(scenario(), timeout=120)
