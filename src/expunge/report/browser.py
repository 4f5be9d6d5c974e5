"""Open a report in headless Chromium and check it: console errors, broken images, screenshot.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (file descriptors 3 and 4,
NUL-separated JSON messages), so it needs nothing beyond the standard library and a
``chromium`` (Debian: ``apt-get install chromium``) or Chrome binary on the PATH.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expunge.errors import ExpungeError
from expunge.files import atomic_write_bytes

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@dataclass
class BrowserResult:
    errors: list[str] = field(default_factory=list)  # exceptions, console errors, log errors
    console: list[str] = field(default_factory=list)  # every console message
    images: int = 0
    broken_images: int = 0
    width: int = 0
    height: int = 0
    title: str = ""


def find_browser() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    def __init__(self, process: subprocess.Popen, write_fd: int, read_fd: int) -> None:
        self.process = process
        self.write_fd = write_fd
        self.read_fd = read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self.next_id, timeout)
        if "error" in reply:
            raise ExpungeError(f"browser: {method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait(self, predicate, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExpungeError(f"browser: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise ExpungeError("browser: the browser process closed its pipe")
                self.buffer += chunk


def render_in_browser(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    timeout: float = 60.0,
    binary: str | None = None,
) -> BrowserResult:
    """Load ``html_path`` in headless Chromium; collect errors; write a full-page PNG."""
    binary = binary or find_browser()
    if binary is None:
        raise ExpungeError("no chromium or chrome on the PATH (Debian: apt-get install chromium)")
    url = Path(html_path).resolve().as_uri()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:  # runs in the child before exec: the protocol wants fds 3 and 4
        # Python's own descriptors are close-on-exec; only these two (dup2: inheritable) pass.
        high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)
        os.set_inheritable(3, True)  # dup2(3, 3) is a no-op that keeps close-on-exec
        os.set_inheritable(4, True)

    profile = tempfile.mkdtemp(prefix="expunge-chromium-")
    process = subprocess.Popen(
        [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
         "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", f"--user-data-dir={profile}", "about:blank"],
        close_fds=False, preexec_fn=child_fds,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(process, to_browser_w, from_browser_r)
    result = BrowserResult()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
        session = pipe.send("Target.attachToTarget",
                            {"targetId": target["targetId"], "flatten": True})["sessionId"]  # fmt: skip
        for domain in ("Page", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session=session)  # fmt: skip
        pipe.send("Page.navigate", {"url": url}, session=session)
        pipe.wait(lambda m: m.get("method") == "Page.loadEventFired", timeout)
        probe = pipe.send("Runtime.evaluate", {"returnByValue": True, "expression": (
            "JSON.stringify({title: document.title, images: document.images.length,"
            " broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length,"
            " height: document.documentElement.scrollHeight})"
        )}, session=session)  # fmt: skip
        page = json.loads(probe["result"]["value"])
        result.title, result.images = page["title"], page["images"]
        result.broken_images, result.width, result.height = page["broken"], width, page["height"]
        if screenshot is not None:
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": min(page["height"], 16000),
                       "deviceScaleFactor": 1, "mobile": False}, session=session)  # fmt: skip
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session,
                             timeout=timeout)  # fmt: skip
            # atomic: an interrupted or failed capture leaves the old file, never half a PNG
            atomic_write_bytes(screenshot, base64.b64decode(shot["data"]))
        for event in pipe.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                result.errors.append(params["exceptionDetails"].get("text", "exception"))
            elif event["method"] == "Runtime.consoleAPICalled":
                text = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
                result.console.append(f"{params.get('type')}: {text}")
                if params.get("type") in {"error", "assert"}:
                    result.errors.append(text)
            elif event["method"] == "Log.entryAdded":
                entry = params.get("entry", {})
                result.console.append(f"{entry.get('level')}: {entry.get('text')}")
                if entry.get("level") == "error":
                    result.errors.append(entry.get("text", ""))
        if result.broken_images:
            result.errors.append(f"{result.broken_images} of {result.images} images did not decode")
        with _suppress():
            pipe.send("Browser.close", timeout=5)
    finally:
        os.close(to_browser_w)
        os.close(from_browser_r)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return result


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ExpungeError | OSError)  # type: ignore[arg-type]
