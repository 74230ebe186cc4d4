"""Headless Chromium driven over the DevTools protocol on a pipe (no extra package), and a local HTTP server.

`--dump-dom` with a virtual-time budget cannot wait for a web worker (MkDocs Material's search runs in one),
so pages that need one are opened here in real time: evaluate a JavaScript expression until it returns
something truthy, or give up after a timeout.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import select
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """A static HTTP server for `folder` on a free local port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Browser:
    """One headless Chromium; `wait_for(url, expression)` opens a tab and polls the expression."""

    def __init__(self, profile: Path, window: tuple[int, int] | None = None):
        ours_read, chrome_write = os.pipe()
        chrome_read, ours_write = os.pipe()

        def plumb() -> None:  # Chromium reads commands on fd 3 and writes answers on fd 4
            high_read, high_write = os.dup2(chrome_read, 100), os.dup2(chrome_write, 101)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-pipe",
             *([f"--window-size={window[0]},{window[1]}"] if window else []), "about:blank"],
            preexec_fn=plumb, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(chrome_read)
        os.close(chrome_write)
        self._in, self._out, self._buf, self._id = ours_read, ours_write, b"", 0

    def _call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]
            if not select.select([self._in], [], [], max(0.0, end - time.monotonic()))[0]:
                break
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buf += chunk
        raise TimeoutError(method)

    def wait_for(self, url: str, expression: str, timeout: float = 60, close: bool = False) -> Any:
        """Poll `expression` in a new tab on `url` until it is truthy (or `timeout`); `close` closes the tab."""
        target = self._call("Target.createTarget", {"url": url})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        end, value = time.monotonic() + timeout, None
        while time.monotonic() < end:
            result = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            value = result.get("result", {}).get("value")
            if value:
                break
            time.sleep(0.1)
        if close:
            self._call("Target.closeTarget", {"targetId": target})
        return value

    def evaluate_all(self, urls: list[str], expression: str, timeout: float = 60, tabs: int = 8) -> dict[str, Any]:
        """{url: value} of `expression` on each page, `tabs` pages open at a time, each polled until truthy."""
        out: dict[str, Any] = {}
        for start in range(0, len(urls), tabs):
            open_tabs = {}
            for url in urls[start:start + tabs]:
                target = self._call("Target.createTarget", {"url": url})["targetId"]
                open_tabs[url] = (target, self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])
            end = time.monotonic() + timeout
            while open_tabs and time.monotonic() < end:
                for url, (target, session) in list(open_tabs.items()):
                    result = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
                    out[url] = result.get("result", {}).get("value")
                    if out[url]:
                        self._call("Target.closeTarget", {"targetId": target})
                        del open_tabs[url]
                time.sleep(0.1)
            for target, _ in open_tabs.values():
                self._call("Target.closeTarget", {"targetId": target})
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._in)
        os.close(self._out)
