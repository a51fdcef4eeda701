"""Start a real server process for a test and stop it again (the service tests share this)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


@contextlib.contextmanager
def served(command: list[str], *, port: int, cwd: Path, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """Run ``command`` (a server on 127.0.0.1:``port``) until its /readyz answers; yield its base URL.

    The server runs in its own process group, logging to ``log_path``; it is stopped
    (SIGTERM, then SIGKILL after 20 s) when the block ends. A server that exits or is
    not ready within 120 s fails the test with the end of its log.
    """
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    pytest.fail(f"server exited: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready in 120 s: {log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield base
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
