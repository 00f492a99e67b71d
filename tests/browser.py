"""A real headless Chromium for the tests, driven over the DevTools protocol on a pipe.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ended by a NUL byte) on
its file descriptor 3 and write its answers on 4, so the standard library is all a test needs: no
chromedriver, no websocket client. Chromium is Debian's `chromium` package (`make test` installs it).

    with HeadlessChromium(width=1000, height=800) as browser:
        browser.open("http://127.0.0.1:8080/")
        browser.wait_for("document.querySelector('img').naturalWidth > 0")
        png = browser.screenshot()

`python tests/browser.py URL OUT.png [WIDTHxHEIGHT]` takes one screenshot (the README's was made
this way, by tests/test_views_agent.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--mute-audio")
REPLY_TIMEOUT_S = 30.0


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    def __init__(self, width: int = 1000, height: int = 800, mobile: bool = False, log_path: Path | None = None):
        binary = chromium_binary()
        if binary is None:
            raise BrowserError("chromium is not installed (`make test` installs Debian's chromium package)")
        self.profile = tempfile.mkdtemp(prefix="edge-agent-chromium-")
        to_chromium, commands = os.pipe()
        answers, from_chromium = os.pipe()
        args = [binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        # a tiny trampoline puts our pipe ends on Chromium's descriptors 3 and 4, then becomes Chromium
        trampoline = (f"import os; os.dup2({to_chromium}, 3); os.dup2({from_chromium}, 4); "
                      f"os.execv({binary!r}, {args!r})")
        self._log = open(log_path or os.devnull, "wb")
        self.process = subprocess.Popen([sys.executable, "-c", trampoline], pass_fds=(to_chromium, from_chromium),
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        os.close(to_chromium)
        os.close(from_chromium)
        self._out = os.fdopen(commands, "wb", buffering=0)
        self._in = os.fdopen(answers, "rb", buffering=0)
        self._buffer = b""
        self._id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}, self.session)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            answer = self._read()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
        raise BrowserError(f"{method}: no answer within {REPLY_TIMEOUT_S:g} s")

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = self._in.read(1 << 16)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, self.session)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Evaluate until the value is truthy; that value (or BrowserError after timeout_s)."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # the page is still loading
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"{expression} still {value!r} after {timeout_s:g} s")

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, self.session)["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for stream in (self._out, self._in, self._log):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def main() -> None:
    url, out = sys.argv[1], Path(sys.argv[2])
    width, height = (int(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "1000x800").split("x"))
    with HeadlessChromium(width, height) as browser:
        browser.open(url)
        browser.wait_for("document.readyState !== 'loading'")
        time.sleep(2)
        out.write_bytes(browser.screenshot())


if __name__ == "__main__":
    main()
