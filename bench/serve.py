"""Load benchmark of the BentoML service on loopback.

Starts the last packaged Bento (`recforge package`, reports/package.json) on a
free 127.0.0.1 port with `recforge serve` (or targets ``--url``), then for each
endpoint and each concurrency (default 1, 16, 64) sends requests from one
asyncio loop over keep-alive HTTP/1.1 connections, bounded by ``--requests``
and ``--seconds`` per cell. Reports p50/p95/p99 latency, throughput and errors
per endpoint, beside ``/trivial``: a constant list from a trivial BentoML
service with the same workers (bench/trivial_service.py, started on its own
port), the machine's ceiling. Writes bench/results/serve.{json,md}.

    .venv/bin/python bench/serve.py -S paths.reports_dir=/tmp/x/reports ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = [
    "I like science fiction about space travel and artificial intelligence",
    "funny romantic comedies with a happy ending",
    "dark psychological thrillers and crime dramas",
    "animated adventures for children and families",
    "documentaries about history and war",
]
HISTORY_ITEMS = 30  # items per /recommend/history session (issue 14 measures 30)
ENDPOINTS = ["/trivial", "/recommend", "/recommend/text", "/recommend/history", "/similar-items"]


class Connection:
    """A minimal keep-alive HTTP/1.1 client: the cheapest client Python offers, so the
    load generator takes as little of the shared CPU as possible."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            await self.open()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"{self.auth}Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_cell(host, port, token, path, bodies, concurrency, max_requests, max_seconds) -> dict:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(slot: int) -> None:
        nonlocal errors, sent
        conn = Connection(host, port, token)
        try:
            while sent < max_requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                try:
                    status = await conn.post(path, body)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status = 0
                    conn.close()
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000.0
    return {
        "endpoint": path,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
    }


def bodies_for(
    path: str, users: list, items: list, k: int, rng: random.Random, history_items: int = HISTORY_ITEMS
) -> list[bytes]:
    def dump(obj) -> bytes:
        return json.dumps(obj).encode()

    if path == "/trivial":
        return [b"{}"]
    if path == "/recommend":
        return [dump({"user_id": u, "k": k}) for u in rng.sample(users, min(len(users), 500))]
    if path == "/recommend/text":
        return [dump({"text": t, "k": k}) for t in TEXTS]
    if path == "/recommend/history":
        return [dump({"item_ids": rng.sample(items, min(len(items), history_items)), "k": k}) for _ in range(200)]
    if path == "/similar-items":
        return [dump({"item_id": i, "k": k}) for i in rng.sample(items, min(len(items), 200))]
    if path == "/explain":
        return [dump({"user_id": rng.choice(users), "item_id": rng.choice(items)}) for _ in range(200)]
    raise ValueError(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    params_file: str, overrides: list[str], port: int, log_path: Path, access_log: bool
) -> subprocess.Popen:
    flags = (
        ["-p", params_file]
        + [x for o in overrides for x in ("-S", o)]
        + ["-S", f"serve.access_log={str(access_log).lower()}"]
    )
    recforge = str(Path(sys.executable).with_name("recforge"))
    with open(log_path, "w") as log:  # the server keeps its own copy of the descriptor
        return subprocess.Popen(
            [recforge, "serve", "--port", str(port), *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def bentoml_serve(
    target: str,
    working_dir: Path,
    port: int,
    args: dict[str, object],
    log_path: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``bentoml serve TARGET`` from ``working_dir`` on 127.0.0.1:``port`` with typed ``--arg``s, logging to ``log_path``."""
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml_cli) if bentoml_cli.exists() else "bentoml", "serve", target]
    command += ["--working-dir", str(working_dir), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in args.items():
        command += ["--arg", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    with open(log_path, "w") as log:  # the server keeps its own copy of the descriptor
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**(os.environ if env is None else env), "BENTOML_DO_NOT_TRACK": "True"},
        )


def start_trivial(port: int, log_path: Path, *, workers: int = 1, access_log: bool = False) -> subprocess.Popen:
    """The ceiling service (bench/trivial_service.py) on 127.0.0.1:``port``."""
    args = {"workers": workers, "access_log": access_log}
    return bentoml_serve("trivial_service:Trivial", ROOT / "bench", port, args, log_path)


def stop(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def wait_ready(base: str, process: subprocess.Popen | None, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit("server exited; see its log")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {base} not ready after {timeout:.0f}s")


def markdown(rows: list[dict], meta: dict, ceiling: dict) -> str:
    lines = [
        f"# Serving benchmark ({meta.get('model_tag')}, model `{meta.get('model')}`, text path `{meta.get('text_path')}`)",
        "",
        f"{meta.get('counts')} · machine: {os.cpu_count()} CPUs shared with other work (timings are noisy) · "
        f"client and server on the same machine, loopback; load average at the start {os.getloadavg()[0]:.1f}",
        "",
        "| endpoint | concurrency | requests | errors | p50 ms | p95 ms | p99 ms | req/s | vs /trivial |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = ceiling.get(r["concurrency"])
        ratio = f"{r['throughput_rps'] / base:.0%}" if base else ""
        lines.append(
            f"| {r['endpoint']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['p99_ms']} | {r['throughput_rps']} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def history_breakdown(engine, items: list, k: int, repeats: int) -> dict:
    """Where a re-ranked /recommend/history request spends its time: each candidate model's fold-in (the call
    the engine makes), the session's features and the re-ranker's scoring (OnlineReranker.rank_history's
    timings); p50/p99 ms of each part over ``repeats`` sessions of HISTORY_ITEMS random known items."""
    rng = random.Random(2)
    reranker = engine.reranker
    parts: dict[str, list[float]] = {}
    for _ in range(repeats):
        known = np.array([engine.maps.lookup_item(i) for i in rng.sample(items, HISTORY_ITEMS)], dtype=np.int64)
        lists = {}
        for name in reranker.models:
            started = time.perf_counter()
            lists[name] = engine.models[name].recommend_history(known, k=reranker.per_model, exclude_seen=True)
            parts.setdefault(f"fold-in {name}", []).append((time.perf_counter() - started) * 1000.0)
        timings: dict[str, float] = {}
        reranker.rank_history(known, lists, k, timings=timings)
        for part, seconds in timings.items():
            parts.setdefault(part, []).append(seconds * 1000.0)
    total = np.sum(list(parts.values()), axis=0)
    row = {
        "endpoint": "/recommend/history breakdown",
        "calls": repeats,
        "total_p50_ms": round(float(np.median(total)), 3),
    }
    for part, values in parts.items():
        row[f"{part} p50/p99 ms"] = f"{np.percentile(values, 50):.2f} / {np.percentile(values, 99):.2f}"
    print(json.dumps(row), flush=True)
    return row


def in_process(params, users: list, items: list, k: int, repeats: int) -> list[dict]:
    """Latency of the Engine calls alone (no HTTP): what the server computes per request."""
    import bentoml

    from recforge.engine import Engine
    from recforge.threads import limit_threads

    packaged = json.loads((Path(params.paths.reports_dir) / "package.json").read_text())
    engine = Engine.load(bentoml.models.get(packaged["model_tag"]).path, device=params.serve.device)
    limit_threads(params.serve.threads)
    rng = random.Random(1)
    calls = {
        "/recommend": lambda i: engine.recommend(users[i % len(users)], k),
        "/recommend/text": lambda i: engine.recommend_text(TEXTS[i % len(TEXTS)], k),
        "/recommend/history": lambda i: engine.recommend_history(rng.sample(items, HISTORY_ITEMS), k),
        "/similar-items": lambda i: engine.similar_items(items[i % len(items)], k),
        "/explain": lambda i: engine.explain(users[i % len(users)], items[i % len(items)]),
    }
    rows = []
    if engine.reranks_sessions:
        rows.append(history_breakdown(engine, items, k, repeats))
    for path, call in calls.items():
        n = repeats if path != "/recommend/text" else max(20, repeats // 10)
        times = []
        for i in range(n):
            started = time.perf_counter()
            call(i)
            times.append((time.perf_counter() - started) * 1000.0)
        ms = np.array(times)
        rows.append(
            {
                "endpoint": path,
                "calls": n,
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("-p", "--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--token", default=os.environ.get("RECFORGE_API_TOKEN"))
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--requests", type=int, default=2000, help="at most this many requests per cell")
    parser.add_argument("--seconds", type=float, default=15.0, help="at most this long per cell")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--history-items", type=int, default=HISTORY_ITEMS, help="items per /recommend/history body")
    parser.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="N",
        help="also time N Engine calls per endpoint without HTTP (the server's own work)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="keep the per-request access log (off by default, as in a load test)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve"))
    args = parser.parse_args()

    from recforge.params import load_params
    from recforge.workspace import Workspace

    params = load_params(args.params, args.overrides)
    process = trivial = None
    endpoints = args.endpoints.split(",")
    try:
        if args.url:
            base = args.url.rstrip("/")
        else:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            process = start_server(args.params, args.overrides, port, Path(args.out + ".server.log"), args.access_log)
        ceiling_base = None
        if "/trivial" in endpoints:
            trivial_port = free_port()
            ceiling_base = f"http://127.0.0.1:{trivial_port}"
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            trivial = start_trivial(
                trivial_port, Path(args.out + ".trivial.log"), workers=params.serve.workers, access_log=args.access_log
            )
            wait_ready(ceiling_base, trivial)
        wait_ready(base, process)
        import httpx

        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        meta = httpx.get(f"{base}/metadata", headers=headers, timeout=10).json()
        workspace = Workspace(params)
        users = [u.item() if hasattr(u, "item") else u for u in workspace.maps.user_ids[:5000]]
        items = [i.item() if hasattr(i, "item") else i for i in workspace.maps.item_ids]
        rng = random.Random(0)
        rows = []
        for path in endpoints:
            url = urlparse(ceiling_base if path == "/trivial" else base)
            bodies = bodies_for(path, users, items, args.k, rng, args.history_items)
            asyncio.run(run_cell(url.hostname, url.port, args.token, path, bodies, 4, args.warmup, 30))
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                row = asyncio.run(
                    run_cell(url.hostname, url.port, args.token, path, bodies, concurrency, args.requests, args.seconds)
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
        ceiling = {r["concurrency"]: r["throughput_rps"] for r in rows if r["endpoint"] == "/trivial"}
        engine_rows = in_process(params, users, items, args.k, args.in_process) if args.in_process else []
        result = {
            "metadata": meta,
            "rows": rows,
            "in_process": engine_rows,
            "cpus": os.cpu_count(),
            "load_average_end": os.getloadavg()[0],
            "args": vars(args) | {"token": bool(args.token)},
        }
        Path(args.out + ".json").write_text(json.dumps(result, indent=2))
        text = markdown(rows, meta, ceiling)
        if engine_rows:
            text += "\nIn-process Engine calls (no HTTP, same machine, same moment):\n\n| call | calls | p50 ms | p99 ms |\n|---|---:|---:|---:|\n"
            timed = [r for r in engine_rows if "p50_ms" in r]
            text += "".join(f"| {r['endpoint']} | {r['calls']} | {r['p50_ms']} | {r['p99_ms']} |\n" for r in timed)
            for r in engine_rows:
                if "p50_ms" not in r:  # a breakdown: one part per column, "p50 / p99"
                    parts = [(key, value) for key, value in r.items() if key not in ("endpoint", "calls")]
                    text += f"\n{r['endpoint']} ({r['calls']} calls, ms):\n\n| part | value |\n|---|---:|\n"
                    text += "".join(f"| {key} | {value} |\n" for key, value in parts)
        text += f"\nLoad average at the end: {os.getloadavg()[0]:.1f}\n"
        Path(args.out + ".md").write_text(text)
        print(text)
    finally:
        stop(process)
        stop(trivial)


if __name__ == "__main__":
    main()
