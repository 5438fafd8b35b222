"""A real `billow serve` process, as a user starts it (console script, data dir, config file)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port

BIN = Path(sys.executable).with_name("billow")


class Server:
    def __init__(self, data_dir: Path, config: Path | None = None) -> None:
        self.data_dir, self.config = data_dir, config
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> Server:
        self.port = free_port()
        args = [str(BIN), "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.config:
            args += ["--config", str(self.config)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 90
        assert self.proc.stdout is not None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if "ready, listening on" in line:
                assert f"http://127.0.0.1:{self.port}" in line
                return self
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"billow serve exited with {self.proc.returncode}")
        raise RuntimeError("billow serve did not become ready")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={**(headers or {})})
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, hdrs, payload = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, hdrs, payload = err.code, dict(err.headers), err.read()
        ctype = hdrs.get("Content-Type", "")
        parsed: Any = json.loads(payload) if payload and "json" in ctype else payload.decode()
        return status, hdrs, parsed


class Drained(Server):
    """billow serve whose output is read all the time: a logged traceback (a 500's can be ~100 KB) must not fill the
    pipe and stop the server mid-test."""

    def start(self) -> Drained:
        super().start()
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("billow-data")).start()
    yield srv
    if srv.proc is not None:
        srv.stop()


