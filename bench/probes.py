"""Hostile-input probes against the served package (issue 11), with /livez watched during each.

Starts the last package (`recforge package`, reports/package.json) with
`recforge serve` on a free 127.0.0.1 port and a bearer token (or targets
``--url``), then sends each probe once while a second thread polls /livez
every few milliseconds. Prints one table row per probe: HTTP status, the
probe's latency and the longest /livez answer while it ran (how long the
worker was blocked). Writes bench/results/probes.{json,md}.

    .venv/bin/python bench/probes.py -S paths.reports_dir=/tmp/x/reports ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import free_port, start_server, stop, wait_ready  # noqa: E402 - bench/serve.py

TOKEN = "probe-token"


class LivezWatch:
    """Polls /livez from its own thread; ``worst(start, end)`` is the longest answer overlapping a window."""

    def __init__(self, base: str) -> None:
        self.base, self.samples, self.running = base, [], True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while self.running:
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{self.base}/livez")
                self.samples.append((started, time.perf_counter()))
                time.sleep(0.005)

    def worst(self, start: float, end: float) -> float:
        overlapping = [b - a for a, b in list(self.samples) if b >= start and a <= end]
        return max(overlapping, default=0.0)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=130)


def raw_post(base: str, path: str, headers: dict[str, str], body_size: int, chunk: bytes) -> int:
    """POST announcing ``body_size`` bytes (sending as many as the server reads); the status it answers."""
    url = urlparse(base)
    with socket.create_connection((url.hostname, url.port), timeout=120) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Length: {body_size}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode())
        sent = 0
        sock.settimeout(0.0)
        answer = b""
        while sent < body_size:
            with contextlib.suppress(BlockingIOError, OSError):
                answer += sock.recv(65536)
            if answer:
                break
            piece = chunk[: body_size - sent]
            try:
                sock.settimeout(120)
                sent += sock.send(piece)
                sock.settimeout(0.0)
            except OSError:
                break
        sock.settimeout(120)
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def probes(meta: dict) -> list[tuple[str, str, dict]]:
    """(name, path, request) for each probe; request is httpx keyword arguments or {"raw": ...}."""
    user = meta.get("example_user_id", 1)
    return [
        ("normal text", "/recommend/text", {"json": {"text": "space travel and robots", "k": 10}}),
        ('10,000 "["', "/recommend/text", {"json": {"text": "[" * 10_000, "k": 10}}),
        ('10,000 chars "[a]("', "/recommend/text", {"json": {"text": "[a](" * 2_500, "k": 10}}),
        ('10,000 chars "<script "', "/recommend/text", {"json": {"text": "<script " * 1_250, "k": 10}}),
        ("/encode 40 KB text", "/encode", {"json": {"texts": ["[" * 40_000]}}),
        ("/encode 64 x 5,000 '['", "/encode", {"json": {"texts": ["[" * 5_000] * 64}}),
        ("/encode 1,000 texts", "/encode", {"json": {"texts": ["a film"] * 1_000}}),
        ("/recommend/history 100 MB", "/recommend/history", {"raw": 100 * (1 << 20)}),
        (
            "/recommend/history 1,000 unknown ids",
            "/recommend/history",
            {"json": {"item_ids": [f"nope-{i}" for i in range(1_000)], "k": 10}},
        ),
        ("/recommend explain=true k=100", "/recommend", {"json": {"user_id": user, "k": 100, "explain": True}}),
        ("text/plain body", "/recommend", {"content": json.dumps({"user_id": user}), "ctype": "text/plain"}),
        (
            "form body",
            "/recommend",
            {"content": f"user_id={user}", "ctype": "application/x-www-form-urlencoded"},
        ),
        ("Host: evil.example", "/recommend", {"json": {"user_id": user}, "host": "evil.example"}),
        ("no token", "/recommend", {"json": {"user_id": user}, "no_token": True}),
        ("k=101", "/recommend", {"json": {"user_id": user, "k": 101}}),
    ]


def run_probe(client: httpx.Client, base: str, token: str | None, path: str, request: dict) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token and not request.get("no_token") else {}
    if "host" in request:
        headers["Host"] = request["host"]
    if "raw" in request:
        headers["Content-Type"] = "application/json"
        return raw_post(base, path, headers, request["raw"], b"[" + b'"x",' * 262_144), ""
    if "ctype" in request:
        headers["Content-Type"] = request["ctype"]
        response = client.post(path, content=request["content"], headers=headers)
    else:
        response = client.post(path, json=request["json"], headers=headers)
    text = response.text
    if response.status_code == 200 and path == "/recommend/history":
        body = response.json()
        text = f"unknown echoed {len(body['unknown_item_ids'])}, count {body.get('unknown_item_count', '-')}"
    elif response.status_code == 200 and "explain" in request.get("json", {}):
        body = response.json()
        explained = sum(1 for item in body["items"] if item.get("explanation"))
        text = f"{explained} of {len(body['items'])} explained"
    return response.status_code, text[:120]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="probe a running server instead of starting one")
    parser.add_argument("--token", default=None, help="its token (default: a token for the server started here)")
    parser.add_argument("-p", "--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=3, help="send each probe this many times (report the worst)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "probes"))
    args = parser.parse_args()

    process = None
    token = args.token
    try:
        if args.url:
            base = args.url.rstrip("/")
        else:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            token = token or TOKEN
            os.environ["RECFORGE_API_TOKEN"] = token  # the server started here inherits it
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            process = start_server(args.params, args.overrides, port, Path(args.out + ".server.log"), False)
        wait_ready(base, process)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        meta = httpx.get(f"{base}/metadata", headers=auth, timeout=10).json()
        watch = LivezWatch(base)
        rows = []
        with httpx.Client(base_url=base, timeout=120) as client:
            for name, path, request in probes(meta):
                worst = None
                for _ in range(args.repeat):
                    time.sleep(0.1)
                    started = time.perf_counter()
                    try:
                        status, note = run_probe(client, base, token, path, request)
                    except httpx.HTTPError as exc:
                        status, note = 0, f"{type(exc).__name__}: {exc}"
                    ended = time.perf_counter()
                    time.sleep(0.05)  # let a /livez poll that was waiting finish
                    row = {
                        "probe": name,
                        "path": path,
                        "status": status,
                        "ms": round((ended - started) * 1000, 1),
                        "livez_max_ms": round(watch.worst(started, ended) * 1000, 1),
                        "note": note,
                    }
                    if worst is None or row["ms"] > worst["ms"]:
                        worst = row | {"livez_max_ms": max(row["livez_max_ms"], (worst or row)["livez_max_ms"])}
                rows.append(worst)
                print(json.dumps(worst), flush=True)
        watch.close()
        lines = [
            f"# Probes ({meta.get('model_tag')}, text path `{meta.get('text_path')}`, worst of {args.repeat})",
            "",
            "| probe | endpoint | status | ms | longest /livez during it, ms | answer |",
            "|---|---|---:|---:|---:|---|",
        ]
        for r in rows:
            note = r["note"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r['probe']} | {r['path']} | {r['status']} | {r['ms']} | {r['livez_max_ms']} | {note} |")
        text = "\n".join(lines) + "\n"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(rows, indent=2))
        Path(args.out + ".md").write_text(text)
        print(text)
    finally:
        stop(process)


if __name__ == "__main__":
    main()
