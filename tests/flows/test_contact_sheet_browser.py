"""The contact sheet of a real 12-pair flow run, loaded in headless Chromium.

Chromium is driven over the DevTools protocol on 127.0.0.1: the test opens
``report.html`` from the file system, waits for every image, and reads the
rows, the images' natural sizes, the requests made and the console errors.
It skips when no ``chromium`` (Debian package ``chromium``) is installed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from websockets.sync.client import connect

from flows.batch import run_batch
from flows.cli import main as nst_main
from flows.report import read_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"),
]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]

PAGE_STATE = """
Promise.all(Array.from(document.images).map(image => image.complete ? null :
    new Promise(done => { image.onload = done; image.onerror = done; })))
  .then(() => JSON.stringify({
    rows: Array.from(document.querySelectorAll("#pairs tbody tr")).map(row => row.dataset.index),
    images: Array.from(document.images).map(image =>
        ({src: image.getAttribute("src"), width: image.naturalWidth, height: image.naturalHeight})),
  }))
"""


class Browser:
    """A headless Chromium in a fresh profile, with one page driven over DevTools."""

    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not start (exit code {self.process.returncode})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(target for target in targets if target["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.events: list[dict] = []
        self._next_id = 0

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv(timeout=deadline - time.monotonic()))
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise TimeoutError(f"no {method} event within {timeout} s")

    def open(self, url: str) -> None:
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    instance = Browser(profile)
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, content_dir, style_dir, standin_weights) -> Path:
    """A real nst-batch flow run over 4 content x 3 style images: 12 pairs at 64 px, 20 steps."""
    output_dir = tmp_path_factory.mktemp("flow") / "night run #1"
    summary = run_batch(
        content_dir=str(content_dir),
        style_dir=str(style_dir),
        output_dir=str(output_dir),
        weights=str(standin_weights),
        workers=1,
        defaults={"size": 64, "steps": 20},
    )
    assert summary["done"] == 12, summary
    return output_dir


def test_flow_run_writes_the_review(flow_run):
    report = read_report(flow_run / "report.csv")

    assert len(report) == 12
    assert (flow_run / "report.html").is_file()
    assert (flow_run / "loss_curves.png").is_file()
    assert len(list((flow_run / "curves").glob("*.png"))) == 12


def test_nst_report_rebuilds_the_flow_review(flow_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(flow_run, run)
    for generated in ("report.html", "loss_curves.png"):
        (run / generated).unlink()
    for folder in ("thumbnails", "curves"):
        shutil.rmtree(run / folder)

    code = nst_main(["report", str(run)])
    page = (run / "report.html").read_text(encoding="utf-8")

    assert code == 0
    assert page.count("<tr class=") == 12
    assert page.count('class="curve"') == 12
    with Image.open(run / "loss_curves.png") as plot:
        assert plot.size == (1500, 550)


def test_browser_shows_every_row_and_image(flow_run, browser, tmp_path):
    browser.open((flow_run / "report.html").as_uri())
    state = json.loads(browser.evaluate(PAGE_STATE))
    screenshot = Image.open(io.BytesIO(_base64(browser.call("Page.captureScreenshot", format="png")["data"])))

    assert len(state["rows"]) == len(read_report(flow_run / "report.csv"))
    # 3 thumbnails and a curve per row.
    assert len(state["images"]) == 4 * 12
    broken = [image["src"] for image in state["images"] if image["width"] == 0]
    assert broken == []
    assert screenshot.size[0] >= 1000
    assert max(ImageStat.Stat(screenshot.convert("L")).stddev) > 20, "the screenshot looks blank"
    screenshot.save(tmp_path / "contact-sheet.png")


def test_page_makes_no_network_request(flow_run, browser):
    browser.open((flow_run / "report.html").as_uri())
    browser.evaluate(PAGE_STATE)

    requests = [event["params"]["request"]["url"] for event in browser.events
                if event.get("method") == "Network.requestWillBeSent"]  # fmt: skip
    assert requests
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    errors = [event["params"]["entry"] for event in browser.events
              if event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error"]  # fmt: skip
    assert errors == []


def test_sorting_by_total_loss_and_status(flow_run, browser):
    browser.open((flow_run / "report.html").as_uri())

    def column_after_click(key: str, attribute: str) -> list[float]:
        return browser.evaluate(
            f'document.querySelector(\'button[data-key="{key}"]\').click();'
            f'Array.from(document.querySelectorAll("#pairs tbody tr")).map(row => parseFloat(row.dataset.{attribute}))'
        )

    ascending = column_after_click("total", "total")
    descending = column_after_click("total", "total")
    by_time = column_after_click("time", "time")

    assert ascending == sorted(ascending)
    assert descending == sorted(ascending, reverse=True)
    assert by_time == sorted(by_time)


def test_awkward_names_and_missing_images_in_the_browser(flow_run, browser, tmp_path, content_dir):
    # A copy of the run whose report names an awkward content file and a
    # content image that is gone, as after moving the folder to another machine.
    run = tmp_path / "copy ü #2"
    shutil.copytree(flow_run, run)
    awkward = run.parent / "inputs" / "a b#c?ü &<x>'\".png"
    awkward.parent.mkdir()
    shutil.copy(next(content_dir.glob("*.png")), awkward)
    text = (run / "report.csv").read_text(encoding="utf-8")
    first, second = sorted({line.split(",")[1] for line in text.splitlines()[1:]})[:2]
    text = text.replace(first, '"' + str(awkward).replace('"', '""') + '"').replace(second, "/nonexistent/gone.png")
    (run / "report.csv").write_text(text, encoding="utf-8", newline="")

    assert nst_main(["report", str(run)]) == 0
    browser.open((run / "report.html").as_uri())
    state = json.loads(browser.evaluate(PAGE_STATE))

    assert len(state["rows"]) == 12
    assert [image["src"] for image in state["images"] if image["width"] == 0] == []
    assert sum(image["src"] == "thumbnails/missing.png" for image in state["images"]) == 3
    links = browser.evaluate('Array.from(document.links).map(link => decodeURIComponent(link.href))')
    assert any(link.endswith("/inputs/a b#c?ü &<x>'\".png") for link in links)


def _base64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)
