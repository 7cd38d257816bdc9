"""The console in a real browser: Debian's headless Chromium, driven by Selenium through Debian's chromium-driver,
opens the page of a running daemon, sees the preview change, uploads clips (enqueue, play now), sees them queued and
on air with the `started` event arriving over the live event stream, moves a pending clip down, cancels a pending
clip, changes the avatar by upload, sees the health charts drawn, adds and removes a file output. Screenshots go to
$FLASHTALK_TEST_ARTIFACTS (default test-artifacts/) /console/ (`console.png` is the one docs/console.md shows).
Required in CI (CI=1): never skipped there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from console_support import ChunkColourRenderer, Http, console_settings, wait_until, wav_bytes
from flashtalk_live.daemon import Daemon

PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8"
                        "cfc0000003010100c9fe92ef0000000049454e44ae426082")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000"]


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package (pip install -e '.[test]')"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} (apt-get install {pkg})"
    return None


@pytest.fixture
def browser():
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the console's browser test is required in CI; missing {missing}")
        pytest.skip(f"missing {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ARGS:
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def artefacts() -> Path:
    root = Path(os.environ.get("FLASHTALK_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
    out = root / "console"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.timeout(240)
def test_operator_drives_the_room_from_the_page(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    shots = artefacts()
    d = Daemon(console_settings(tmp_path, "console.health_interval_s=0.5"),
               renderer_factory=lambda _s: ChunkColourRenderer(128, 128))
    d.start()
    try:
        wait = WebDriverWait(browser, 45, poll_frequency=0.2)
        find = browser.find_element
        browser.get(f"http://127.0.0.1:{d.metrics_port}/")
        wait.until(lambda b: find(By.ID, "state").text == "on_air")

        # The preview loads and changes (each chunk is another colour).
        wait.until(lambda b: b.execute_script("const i = document.getElementById('preview');"
                                              "return i.complete && i.naturalWidth > 0;"))
        first = find(By.ID, "preview").screenshot_as_png
        wait.until(lambda b: find(By.ID, "preview").screenshot_as_png != first)
        browser.save_screenshot(str(shots / "01-page.png"))

        find(By.ID, "token").send_keys(d.console_token)
        find(By.ID, "token-save").click()
        wait.until(lambda b: find(By.ID, "token-state").text == "token set")

        def click(selector: str) -> None:
            # One script finds and clicks: the tables are redrawn twice a second, so a found element may go stale.
            wait.until(lambda b: b.execute_script("const e = document.querySelector(arguments[0]);"
                                                  "if (e) e.click(); return !!e;", selector))

        def command(button: str, name: str, by_script: bool = False) -> str:
            """Click a control and return the page's message about that command once its reply came."""
            browser.execute_script("document.getElementById('message').textContent = '';")
            click(button) if by_script else find(By.ID, button).click()
            return wait.until(lambda b: (t := find(By.ID, "message").text).startswith(f"{name}: ")
                              and "sending" not in t and t)

        def upload(seconds: float, mode: str, name: str, freq: float) -> str:
            wav = tmp_path / name
            wav.write_bytes(wav_bytes(seconds, freq))
            find(By.ID, "clip-file").send_keys(str(wav))
            Select(find(By.ID, "clip-mode")).select_by_value(mode)
            result = command("clip-send", mode)
            assert result.startswith(f"{mode}: ok ("), result
            return result[result.index("(") + 1:result.index(")")]

        first_clip = upload(8.0, "enqueue", "long.wav", 330.0)
        pending = upload(4.0, "enqueue", "pending.wav", 440.0)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#queue tr[data-segment-id="{pending}"]'))
        browser.save_screenshot(str(shots / "02-queued.png"))

        now = upload(30.0, "play_now", "now.wav", 660.0)  # long: the pending clips stay pending meanwhile
        # `started` arrives over the live event stream (server-sent events), not by polling.
        wait.until(lambda b: b.find_elements(
            By.CSS_SELECTOR, f'#events li[data-type="started"][data-segment-id="{now}"][data-via="stream"]'))
        assert find(By.ID, "events-mode").text == "live"
        wait.until(lambda b: now in find(By.ID, "on-air").text)
        browser.save_screenshot(str(shots / "03-play-now-on-air.png"))
        assert len({first_clip, pending, now}) == 3

        # Move a pending clip down with its row's button: the page and the API show the new order.
        second = upload(3.0, "enqueue", "second.wav", 550.0)
        def rows(b) -> list[str]:  # in one script: the table is redrawn twice a second
            return b.execute_script("return [...document.querySelectorAll('#queue tr')].map(r => r.dataset.segmentId);")

        wait.until(lambda b: rows(b) == [pending, second])
        result = command(f'#queue tr[data-segment-id="{pending}"] button.down', "move", by_script=True)
        assert result == f"move: ok ({pending})", result
        wait.until(lambda b: rows(b) == [second, pending])
        assert [p["segment_id"] for p in Http(d.metrics_port).get_json("/api/queue")["pending"]] == [second, pending]
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#events li[data-type="moved"][data-segment-id="{pending}"]'))
        browser.save_screenshot(str(shots / "04-moved.png"))

        # Change the avatar by upload.
        png = tmp_path / "face.png"
        png.write_bytes(PNG_1PX)
        find(By.ID, "avatar-file").send_keys(str(png))
        assert command("avatar-send", "set_avatar") == "set_avatar: ok"

        # The health charts are drawn from /api/health (several samples by now: one every 0.5 s).
        wait.until(lambda b: b.execute_script(
            "const c = document.querySelector('#health-chart .chart[data-series=\"av_skew_s\"]');"
            "return c && c.querySelector('polyline') && Number(c.dataset.points) >= 3;"))
        points = browser.execute_script("return document.querySelector("
                                        "'#health-chart .chart[data-series=\"buffered_frames\"] polyline')"
                                        ".getAttribute('points').trim().split(' ').length;")
        assert points >= 3
        browser.set_window_size(1280, 1300)
        browser.save_screenshot(str(shots / "console.png"))  # the docs' screenshot: on air, queue, health, events
        browser.set_window_size(1280, 1000)

        # Cancel a pending clip from its row.
        result = command(f'#queue tr[data-segment-id="{pending}"] button.cancel', "cancel", by_script=True)
        assert result == f"cancel: ok ({pending}) was pending", result
        wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, f'#queue tr[data-segment-id="{pending}"]'))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#events li[data-type="cancelled"][data-segment-id="{pending}"]'))

        # Add a file output, see it listed, remove it.
        find(By.ID, "out-name").send_keys("browser")
        find(By.ID, "out-url").send_keys(str(tmp_path / "browser.flv"))
        assert command("out-add", "output_add") == "output_add: ok"
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#outputs tr[data-name="browser"]'))
        assert "browser" in d.outputs.names()
        browser.save_screenshot(str(shots / "05-output-added.png"))
        # A refused command shows its code: the same name again.
        assert command("out-add", "output_add").startswith("output_add: already_exists [name]")
        assert command('#outputs tr[data-name="browser"] button.remove', "output_remove", by_script=True) \
            == "output_remove: ok"
        wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, '#outputs tr[data-name="browser"]'))
        assert "browser" not in d.outputs.names()
        browser.save_screenshot(str(shots / "06-output-removed.png"))
    except Exception:
        browser.save_screenshot(str(shots / "failure.png"))
        raise
    finally:
        d.close()
