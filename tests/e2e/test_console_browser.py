"""The console in a real browser: Debian's headless Chromium, driven by Selenium through Debian's chromium-driver,
opens the page of a running daemon, sees the preview change, uploads clips (enqueue, play now), sees them queued and
on air with the `started` event arriving over the live event stream, moves a pending clip down, cancels a pending
clip, changes the avatar by upload, sees the health charts drawn, adds and removes a file output. Screenshots go to
$FLASHTALK_TEST_ARTIFACTS (default test-artifacts/) /console/ (`console.png`, from the show test, is the one
docs/console.md shows).
Required in CI (CI=1): never skipped there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flashtalk_live.daemon import Daemon

from support.console import ChunkColourRenderer, Http, console_settings, wav_bytes

PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8"
                        "cfc0000003010100c9fe92ef0000000049454e44ae426082")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000",
        "--autoplay-policy=no-user-gesture-required"]


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


# What the engine's drift() reports after model.profile = "auto" (the H100 daemon run's measurements, docs/performance.md)
AUTO_DRIFT = {"profile": "realtime", "auto": {"profile": "realtime", "fits": True, "margin": 0.15, "measured": [
    {"profile": "fast", "median_s": 0.9422, "p90_s": 0.9548, "limit_s": 0.952, "fits": False},
    {"profile": "realtime", "median_s": 0.7668, "p90_s": 0.7744, "limit_s": 0.952, "fits": True}],
    "eager_trials": [], "remembered": True, "remembered_age_s": 7500.0}}  # eager trials from auto-profile.json


def _auto_chosen_renderer(_settings):  # noqa: ANN001, ANN202 - the daemon's renderer factory
    r = ChunkColourRenderer(128, 128)
    r.drift = lambda: AUTO_DRIFT  # the supervisor reports the preferred renderer's drift() in status
    return r


@pytest.mark.timeout(240)
def test_operator_drives_the_room_from_the_page(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    shots = artefacts()
    d = Daemon(console_settings(tmp_path, "console.health_interval_s=0.5"), renderer_factory=_auto_chosen_renderer)
    d.start()
    try:
        wait = WebDriverWait(browser, 45, poll_frequency=0.2)
        find = browser.find_element
        browser.get(f"http://127.0.0.1:{d.metrics_port}/")
        wait.until(lambda b: find(By.ID, "state").text == "on_air")
        # auto's choice, the chunk times it chose by and the age of its remembered eager trials, as status reports them
        wait.until(lambda b: "profile realtime (auto: fast 0.955 s, realtime 0.774 s; eager trials remembered, 2 h old)"
                   in find(By.ID, "health").text)

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
        browser.save_screenshot(str(shots / "07-health.png"))

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


FLAT = (40, 60, 80)  # the renderer's colour: an overlay shows against it in the recording
CARD_RED = (230, 30, 30)


def _red_png(w: int, h: int) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (w, h), CARD_RED).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.timeout(420)
def test_operator_runs_the_show_with_human_clicks(browser, tmp_path):
    """Every control the show needs, pressed as a person presses (>= 100 ms between press and release), each read back
    from the daemon's state and from the recording: upload with name and caption, ten moves with none lost, play a
    pending clip now, skip the clip on air, a text overlay and a product card shown and hidden with their placement,
    the sound of the air, readable events with the raw JSON on demand."""
    import json

    import av
    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from support.fakes import PaintRenderer
    from support.air import FPS, Recording

    shots = artefacts()
    w, h = 320, 240
    d = Daemon(console_settings(tmp_path, f"video.width={w}", f"video.height={h}", "console.health_interval_s=1"),
               renderer_factory=lambda _s: PaintRenderer(w, h, name="flat", colour=lambda i: FLAT))
    seen: list[dict] = []
    d.events.subscribe(seen.append)
    d.start()
    http = Http(d.metrics_port)
    try:
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        find = browser.find_element
        browser.get(f"http://127.0.0.1:{d.metrics_port}/")
        wait.until(lambda dr: find(By.ID, "state").text == "on_air")

        def press(target) -> None:
            """A person's click: pointer down, held 120 ms, up (the page redraws meanwhile; the click must land)."""
            e = find(By.CSS_SELECTOR, target) if isinstance(target, str) else target
            ActionChains(browser).move_to_element(e).click_and_hold().pause(0.12).release().perform()

        def pressed(target: str, name: str) -> str:
            """Press a control and return the page's message about command `name` once its reply came."""
            browser.execute_script("document.getElementById('message').textContent = '';")
            press(target)
            return wait.until(lambda dr: (t := find(By.ID, "message").text).startswith(f"{name}: ")
                              and "sending" not in t and t)

        def status() -> dict:
            return http.get_json("/api/status")

        def event(kind: str, sid: str) -> dict:
            return wait.until(lambda dr: next((e for e in seen if e["type"] == kind and e.get("segment_id") == sid), None))

        find(By.ID, "token").send_keys(d.console_token)
        press("#token-save")
        wait.until(lambda dr: find(By.ID, "token-state").text == "token set")

        # -- a text overlay with its placement, then a product card picture; shown, then hidden ------------------
        def set_layer(name: str, anchor: str, x: int, y: int, text: str = "", picture: Path | None = None) -> None:
            for fid in ("ov-name", "ov-text", "ov-x", "ov-y"):
                find(By.ID, fid).clear()
            find(By.ID, "ov-name").send_keys(name)
            if text:
                find(By.ID, "ov-text").send_keys(text)
            if picture is not None:
                find(By.ID, "ov-file").send_keys(str(picture))
            Select(find(By.ID, "ov-anchor")).select_by_value(anchor)
            find(By.ID, "ov-x").send_keys(str(x))
            find(By.ID, "ov-y").send_keys(str(y))
            assert pressed("#ov-set", "overlay_show") == "overlay_show: ok"  # set, then shown ("show now")

        set_layer("price", "bottom_right", 16, 40, text="价格 99 元")
        card_png = tmp_path / "card.png"
        card_png.write_bytes(_red_png(60, 40))
        set_layer("card", "top_left", 8, 8, picture=card_png)
        ov = status()["overlays"]
        assert ov["placement"]["price"] == {"kind": "text", "anchor": "bottom_right", "margin": [16, 40],
                                            "text": "价格 99 元"}
        assert ov["placement"]["card"] == {"kind": "image", "anchor": "top_left", "margin": [8, 8]}
        wait.until(lambda dr: {"price", "card"} <= set(status()["overlays"]["on_air"]))
        wait.until(lambda dr: dr.execute_script("const r = document.querySelector('#overlays tr[data-name=\"card\"]');"
                                                "return r && r.dataset.onAir === 'yes';"))
        shown_at = status()["broadcast"]["media_time_s"]
        browser.save_screenshot(str(shots / "12-overlays.png"))
        # on air for 1.5 s of air time (not wall time: a loaded box may air slower), so the recording shows it
        wait.until(lambda dr: status()["broadcast"]["media_time_s"] > shown_at + 1.5)
        hide_pressed = status()["broadcast"]["media_time_s"]  # the card fades out from the next aired frame
        assert pressed('#overlays tr[data-name="card"] button.hide', "overlay_hide") == "overlay_hide: ok"
        wait.until(lambda dr: "card" not in status()["overlays"]["on_air"])
        hidden_at = status()["broadcast"]["media_time_s"]
        assert "price" in status()["overlays"]["on_air"]

        # -- upload with a name and a caption; the form is empty again after Send -------------------------------
        def upload(seconds: float, freq: float, name: str, text: str = "", mode: str = "enqueue") -> str:
            wav = tmp_path / f"{name}.wav"
            wav.write_bytes(wav_bytes(seconds, freq))
            find(By.ID, "clip-file").send_keys(str(wav))
            find(By.ID, "clip-name").send_keys(name)
            if text:
                find(By.ID, "clip-text").send_keys(text)
            Select(find(By.ID, "clip-mode")).select_by_value(mode)
            result = pressed("#clip-send", mode)
            assert result.startswith(f"{mode}: ok ("), result
            assert browser.execute_script("return ['clip-file', 'clip-name', 'clip-text']"
                                          ".map(i => document.getElementById(i).value);") == ["", "", ""]
            return result[result.index("(") + 1:result.index(")")]

        long = upload(40.0, 440.0, "Opening pitch", "欢迎来到直播间")
        wait.until(lambda dr: "“Opening pitch”" in find(By.ID, "on-air").text)
        a = upload(3.0, 550.0, "Card A")
        b = upload(3.0, 660.0, "Card B", "买一送一")
        c = upload(12.0, 770.0, "Card C")  # long enough to be on air when Skip is pressed on a loaded box
        st = status()
        rows = {p["segment_id"]: p for p in st["pending"]}
        assert [rows[x]["name"] for x in (a, b, c)] == ["Card A", "Card B", "Card C"]
        assert rows[b]["text"] == "买一送一"
        assert next(p for p in st["playing"] if p["segment_id"] == long)["text"] == "欢迎来到直播间"
        assert st["plan"]["on_air"]["name"] == "Opening pitch"

        def page_rows(b) -> list[tuple[str, str, str]]:  # (id, name, caption) as the page shows them
            return b.execute_script("return [...document.querySelectorAll('#queue tr')].map(r => "
                                    "[r.dataset.segmentId, r.querySelector('.clip-name').textContent, "
                                    "r.children[2].textContent]);")

        wait.until(lambda dr: page_rows(dr) == [[a, "Card A", ""], [b, "Card B", "买一送一"], [c, "Card C", ""]])
        browser.save_screenshot(str(shots / "10-named-queue.png"))
        browser.set_window_size(1280, 1400)
        browser.save_screenshot(str(shots / "console.png"))  # the docs' screenshot: a named queue, a caption on air
        browser.set_window_size(1280, 1000)

        # -- ten human-speed presses on ▼/▲ while the page redraws twice a second: none is lost --------------
        for i in range(10):
            button = "button.down" if i % 2 == 0 else "button.up"
            assert pressed(f'#queue tr[data-segment-id="{a}"] {button}', "move") == f"move: ok ({a})", i
            want = [b, a, c] if i % 2 == 0 else [a, b, c]
            wait.until(lambda dr: [r[0] for r in page_rows(dr)] == want)
        assert [p["segment_id"] for p in http.get_json("/api/queue")["pending"]] == [a, b, c]
        assert len([e for e in seen if e["type"] == "moved" and e["segment_id"] == a]) == 10

        # -- play a pending clip now: it goes to the head and the clip on air is skipped ---------------------------
        browser.execute_script("document.getElementById('message').textContent = '';")
        press(f'#queue tr[data-segment-id="{c}"] button.play-now')
        wait.until(lambda dr: find(By.ID, "message").text.startswith("skip: ok"))
        skipped_long = event("skipped", long)
        assert skipped_long["source"] == "queue" and skipped_long["name"] == "Opening pitch"
        cut_long = event("interrupted", long)
        started_c = event("started", c)
        assert started_c["name"] == "Card C"
        wait.until(lambda dr: status()["on_air"] == c)
        assert long not in [p["segment_id"] for p in status()["pending"] + status()["playing"]]
        browser.save_screenshot(str(shots / "11-played-now.png"))

        # -- skip the clip on air with the Air panel's button ----------------------------------------------------
        wait.until(lambda dr: "“Card C”" in find(By.ID, "on-air").text)
        assert pressed("#skip", "skip") == f"skip: ok ({c})"
        cut_c = event("interrupted", c)
        started_next = wait.until(lambda dr: next((e for e in seen if e["type"] == "started"
                                                   and e.get("segment_id") in (a, b)), None))
        assert event("skipped", c)["name"] == "Card C"
        assert c not in [p["segment_id"] for p in status()["pending"] + status()["playing"]]

        # -- the sound of the air -------------------------------------------------------------------------------
        press("#listen")
        wait.until(lambda dr: dr.execute_script("return document.getElementById('preview-audio').currentTime > 0.5;"))
        assert status()["preview"]["listeners"] == 1
        press("#listen")
        wait.until(lambda dr: status()["preview"]["listeners"] == 0)

        # -- events read as lines; the raw JSON on demand -----------------------------------------------------------
        line = wait.until(lambda dr: dr.find_elements(By.CSS_SELECTOR, f'#events li[data-type="skipped"][data-segment-id="{c}"]'))[0]
        assert line.find_element(By.CSS_SELECTOR, ".text").text == "skipped “Card C”"
        raw = line.find_element(By.CSS_SELECTOR, "code.raw")
        assert not raw.is_displayed()
        press("#events-raw")
        wait.until(lambda dr: raw.is_displayed())
        assert json.loads(raw.text)["name"] == "Card C"
        moved = browser.find_elements(By.CSS_SELECTOR, f'#events li[data-type="moved"][data-segment-id="{a}"] .text')[0]
        assert moved.text.startswith("moved “Card A” from position"), moved.text
        browser.set_window_size(1280, 1500)
        browser.save_screenshot(str(shots / "13-events.png"))
        wait.until(lambda dr: status()["broadcast"]["media_time_s"] > hidden_at + 2.0)  # aired without the card
    except Exception:
        browser.save_screenshot(str(shots / "failure-show.png"))
        raise
    finally:
        d.close()

    # -- the recording: what the page did is what aired -------------------------------------------------------------
    rec = Recording(tmp_path / "rec.flv", 440.0, event("started", long)["frame"])
    rec.assert_on(440.0, event("started", long)["frame"], cut_long["frame"], "the opening pitch before the skip")
    rec.assert_off(440.0, cut_long["frame"], cut_c["frame"], "the opening pitch after the skip")
    rec.assert_on(770.0, started_c["frame"], cut_c["frame"], "card C, played now")
    rec.assert_off(770.0, cut_c["frame"], started_next["frame"] + 2 * FPS, "card C after the skip")
    with av.open(str(tmp_path / "rec.flv")) as box:
        frames = [(float(f.pts * f.time_base) - rec.origin, f.to_ndarray(format="rgb24")) for f in box.decode(video=0)]

    def red(img: np.ndarray) -> bool:  # most of the 60x40 card, in the top-left quarter (top_left in the safe area)
        ys, xs = np.nonzero(np.abs(img.astype(int) - CARD_RED).max(axis=2) < 60)
        return len(ys) > 0.6 * 60 * 40 and ys.mean() < img.shape[0] / 2 and xs.mean() < img.shape[1] / 2

    during = [red(img) for t, img in frames if shown_at + 0.8 < t < hide_pressed]
    after = [red(img) for t, img in frames if t > hidden_at + 1.0]
    assert during and all(during), f"the card is not on air while shown ({sum(during)}/{len(during)} frames)"
    assert after and not any(after), "the card stays on air after Hide"
