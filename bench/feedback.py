"""Feedback benchmark: /feedback throughput and latency, durability under SIGKILL, /recommend with exclusions.

Trains a small synthetic package (or takes ``--package DIR``), then on a real ``bentoml serve`` of
``service/`` on 127.0.0.1 (``--workers``, default 2):

1. ``/feedback`` at 16 clients, single events and batches of 100, on SQLite (WAL, the default store)
   and PostgreSQL (a local server from the ``pgserver`` wheel): events/s, requests/s, p50/p99;
2. durability: while 16 clients send events (each with an ``event_id``, resent until acknowledged), the
   whole server is killed with SIGKILL at random moments (``--kills``, at least 10) and restarted; then
   every acknowledged event must be in the store exactly once: acknowledged / stored / lost / duplicated;
3. ``/recommend`` at concurrency 1 for users with feedback, the exclusion off (no store) and on
   (staleness 1 s, and 0 s: a store read per request), p50/p99; and the same calls of ``Engine.recommend``
   in process (no HTTP), which show the exclusion's own cost, and with ``feedback.foldin`` (the users' new
   interests folded into their history).

    nice -n 19 .venv/bin/python bench/feedback.py --seconds 10 --kills 10

Writes bench/results/feedback.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import Connection, bentoml_serve, free_port, run_cell, stop, wait_ready  # noqa: E402

TOKEN = "bench-feedback"
CLIENTS = 16


def psycopg_connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def build_package(root: Path) -> Path:
    from recforge.packaging import build_package as build
    from recforge.params import load_params, paths_under
    from recforge.pipeline import run_pipeline

    params = load_params(None, [*paths_under(root), "recommenders={popularity: {}, itemknn: {neighbors: 50}}"])
    run_pipeline(params)
    build(params, root / "package")
    return root / "package"


def start(package: Path, port: int, log: Path, workers: int, **args: object):
    with socket.socket() as probe:  # a listener left from a killed server would answer in the new one's place
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise SystemExit(f"port {port} is still in use: a process of the previous server survived") from None
    env = {**os.environ, "RECFORGE_API_TOKEN": TOKEN}
    arguments = {"package_dir": package, "device": "cpu", "workers": workers, "access_log": False, **args}
    process = bentoml_serve("service:Recforge", ROOT / "service", port, arguments, log, env=env)
    wait_ready(f"http://127.0.0.1:{port}", process)
    return process


def event_bodies(batch: int, count: int, users: list, items: list, rng: random.Random, tag: str) -> list[bytes]:
    bodies = []
    for n in range(count):
        events = [
            {
                "user_id": rng.choice(users),
                "item_id": rng.choice(items),
                "event": rng.choice(["view", "click", "purchase"]),
                "event_id": f"{tag}-{n}-{e}",
            }
            for e in range(batch)
        ]
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def throughput(package: Path, stores: dict[str, str], args, users, items) -> list[dict]:
    rows = []
    rng = random.Random(0)
    for name, url in stores.items():
        port = free_port()
        process = start(package, port, Path(args.out) / f"serve-{name}.log", args.workers, feedback_url=url)
        try:
            for batch in (1, 100):
                bodies = event_bodies(batch, 3000 if batch == 1 else 400, users, items, rng, f"{name}-{batch}")
                cell = asyncio.run(
                    run_cell("127.0.0.1", port, TOKEN, "/feedback", bodies, CLIENTS, 10**9, args.seconds)
                )
                ok = cell["requests"] - cell["errors"]
                cell.update(store=name, batch=batch, events_per_s=round(ok * batch / cell["seconds"], 1))
                rows.append(cell)
                print(json.dumps(cell), flush=True)
        finally:
            stop(process)
    return rows


def kill_all(process) -> None:
    """SIGKILL the server's arbiter and every worker, mid-request. The workers run in sessions of their own
    (circus), so killing the arbiter's process group alone would leave them serving."""
    import psutil

    workers = psutil.Process(process.pid).children(recursive=True)
    for victim in [*workers, psutil.Process(process.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(workers, timeout=10)


def stored_ids(url: str) -> dict[str, int]:
    """event_id -> how many rows hold it, read straight from the store's database."""
    query = "SELECT event_id, count(*) FROM feedback_events GROUP BY event_id"
    if "://" in url:
        import psycopg

        with psycopg.connect(url) as connection:
            return dict(connection.execute(query).fetchall())
    with sqlite3.connect(url) as connection:
        return dict(connection.execute(query).fetchall())


def durability(package: Path, url: str, args, users, items) -> dict:
    """SIGKILL the server at random moments while 16 clients send; count what was acknowledged and stored.

    A restart that cannot bind the port (a process of the killed server still holding it) stops the run."""
    rng = random.Random(1)
    port = free_port()
    log = Path(args.out) / "serve-durability.log"
    acknowledged: set[str] = set()
    sent_ids: set[str] = set()
    state = {"up": False, "stop": False, "next": 0, "resent": 0}

    async def client(slot: int) -> None:
        connection = Connection("127.0.0.1", port, TOKEN)
        pending: bytes | None = None
        ids: list[str] = []
        while not state["stop"]:
            if pending is None:  # a new batch of 1-5 events; an unacknowledged one is resent as it was
                state["next"] += 1
                ids = [f"d{state['next']}-{e}" for e in range(rng.randint(1, 5))]
                events = [
                    {"user_id": rng.choice(users), "item_id": rng.choice(items), "event": "purchase", "event_id": i}
                    for i in ids
                ]
                pending = json.dumps({"events": events}).encode()
                sent_ids.update(ids)
            if not state["up"]:
                await asyncio.sleep(0.05)
                continue
            try:
                status = await asyncio.wait_for(connection.post("/feedback", pending), 10)
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                connection.close()
                state["resent"] += 1  # this batch goes again (it may have committed: its event_ids tell)
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                acknowledged.update(ids)
                pending = None

    async def killer() -> int:
        kills = 0
        process = None
        loop = asyncio.get_running_loop()
        while kills < args.kills:
            process = await loop.run_in_executor(
                None, lambda: start(package, port, log, args.workers, feedback_url=url)
            )
            state["up"] = True
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            kill_all(process)
            process.wait()
            state["up"] = False
            kills += 1
            print(f"kill {kills}: {len(acknowledged)} acknowledged so far", flush=True)
        process = await loop.run_in_executor(None, lambda: start(package, port, log, args.workers, feedback_url=url))
        state["up"] = True
        await asyncio.sleep(2.0)  # the clients resend what was in flight at the last kill
        state["stop"] = True
        await asyncio.sleep(1.0)
        stop(process)
        return kills

    async def main() -> int:
        clients = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
        kills = await killer()
        await asyncio.gather(*clients)
        return kills

    kills = asyncio.run(main())
    stored = stored_ids(url)
    return {
        "store": "postgresql" if "://" in url else "sqlite",
        "kills": kills,
        "acknowledged": len(acknowledged),
        "stored": sum(stored.values()),
        "lost": len(acknowledged - set(stored)),
        "duplicated": sum(1 for n in stored.values() if n > 1),
        "stored_unacknowledged": len(set(stored) - acknowledged),  # committed, never acknowledged (0: all resent)
        "batches_resent": state["resent"],
        "sent": len(sent_ids),
    }


def recommend_latency(package: Path, url: str, args, users, items) -> list[dict]:
    """/recommend at concurrency 1 for users who each bought 5 items through /feedback: three servers (exclusion
    off, on with staleness 1 s, on with 0 s) up at once and asked in turn, one request at a time, so the other
    work on the machine weighs on the three alike."""
    import numpy as np

    from recforge.feedback import FeedbackStore

    rng = random.Random(2)
    chosen = rng.sample(users, min(200, len(users)))
    FeedbackStore(url).add(
        [{"user_id": u, "item_id": rng.choice(items), "event": "purchase"} for u in chosen for _ in range(5)]
    )
    cells = {
        "off": {},
        "on, staleness 1 s": {"feedback_url": url, "feedback_staleness_s": 1.0},
        "on, staleness 0 s": {"feedback_url": url, "feedback_staleness_s": 0.0},
    }
    servers = {}
    try:
        for label, extra in cells.items():
            port = free_port()
            servers[label] = (
                port,
                start(package, port, Path(args.out) / f"serve-recommend-{len(servers)}.log", 1, **extra),
            )

        async def measure() -> tuple[dict[str, list[float]], dict[str, int]]:
            connections = {label: Connection("127.0.0.1", port, TOKEN) for label, (port, _) in servers.items()}
            times: dict[str, list[float]] = {label: [] for label in servers}
            errors = dict.fromkeys(servers, 0)
            for n in range(args.requests + 50):  # the first 50 rounds warm up and are not counted
                body = json.dumps({"user_id": chosen[n % len(chosen)], "k": 10}).encode()
                for label, connection in connections.items():
                    started = time.perf_counter()
                    status = await connection.post("/recommend", body)
                    if n >= 50:
                        times[label].append(time.perf_counter() - started)
                        errors[label] += status != 200
            for connection in connections.values():
                connection.close()
            return times, errors

        times, errors = asyncio.run(measure())
    finally:
        for _, process in servers.values():
            stop(process)
    rows = []
    for label, values in times.items():
        ms = np.array(values) * 1000
        row = {
            "exclusion": label,
            "requests": len(ms),
            "errors": errors[label],
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def engine_latency(package: Path, url: str, users, items, calls: int) -> list[dict]:
    """Engine.recommend in process (no HTTP): the exclusion's own cost, for users with 5 purchases each."""
    import numpy as np

    from recforge.engine import Engine
    from recforge.feedback import FeedbackStore

    rng = random.Random(3)
    chosen = rng.sample(users, min(200, len(users)))
    FeedbackStore(url).add([{"user_id": u, "item_id": rng.choice(items), "event": "purchase"} for u in chosen[:200]])
    FeedbackStore(url).add([{"user_id": u, "item_id": rng.choice(items), "event": "dislike"} for u in chosen[:200]])
    rows = []
    for label, extra in (
        ("off", {}),
        ("on, staleness 1 s", {"feedback_url": url, "feedback_staleness_s": 1.0}),
        ("on, staleness 0 s", {"feedback_url": url, "feedback_staleness_s": 0.0}),
        ("on, staleness 1 s, fold-in", {"feedback_url": url, "feedback_staleness_s": 1.0, "feedback_foldin": True}),
    ):
        engine = Engine.load(package, device="cpu", **extra)
        times = []
        for n in range(calls):
            started = time.perf_counter()
            engine.recommend(chosen[n % len(chosen)], 10)
            times.append(time.perf_counter() - started)
        ms = np.array(times) * 1000
        row = {
            "exclusion": label,
            "model": engine.recommend(chosen[0], 10).model,
            "calls": calls,
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "| store | batch | clients | requests | errors | events/s | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["throughput"]:
        lines.append(
            f"| {r['store']} | {r['batch']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['events_per_s']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} |"
        )
    if result.get("durability"):
        lines += [
            "",
            "| store | kills | acknowledged | stored | lost | duplicated | batches resent after a failed request |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for d in result["durability"]:
            lines.append(
                f"| {d['store']} | {d['kills']} | {d['acknowledged']} | {d['stored']} | {d['lost']} | "
                f"{d['duplicated']} | {d['batches_resent']} |"
            )
    if result.get("recommend"):
        lines += [
            "",
            "| /recommend, concurrency 1 | requests | errors | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in result["recommend"]:
            lines.append(
                f"| exclusion {r['exclusion']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} |"
            )
    if result.get("engine"):
        lines += ["", "| Engine.recommend in process | model | calls | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
        for r in result["engine"]:
            lines.append(
                f"| exclusion {r['exclusion']} | {r.get('model', '')} | {r['calls']} | {r['p50_ms']} | {r['p99_ms']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", help="a package directory (default: train a small synthetic one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput cell")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1000, help="/recommend requests per cell")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "durability", "recommend", "engine"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if args.kills < 10 and "durability" not in args.skip:
        parser.error("--kills: at least 10")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="recforge-feedback-"))
    package = Path(args.package) if args.package else build_package(work)

    from recforge.engine import Engine

    engine = Engine.load(package, device="cpu")
    users = [int(u) if hasattr(u, "__index__") else str(u) for u in engine.maps.user_ids.tolist()]
    items = [int(i) if hasattr(i, "__index__") else str(i) for i in engine.maps.item_ids.tolist()]
    stores = {"sqlite": str(work / "throughput.sqlite3")}
    server = None
    if not args.no_postgres:
        import pgserver

        server = pgserver.get_server(work / "pg", cleanup_mode="stop")
        stores["postgresql"] = server.get_uri()
    result: dict = {"load_before": os.getloadavg()[0], "workers": args.workers, "cpus": os.cpu_count()}
    try:
        if "throughput" not in args.skip:
            result["throughput"] = throughput(package, stores, args, users, items)
        if "durability" not in args.skip:
            result["durability"] = [durability(package, str(work / "durability.sqlite3"), args, users, items)]
            print(json.dumps(result["durability"][-1]), flush=True)
            if "postgresql" in stores:  # a database of its own: the throughput cells' events stay out of the count
                with psycopg_connect(stores["postgresql"]) as connection:
                    connection.execute("CREATE DATABASE durability")
                pg = stores["postgresql"].replace("/postgres?", "/durability?")
                result["durability"].append(durability(package, pg, args, users, items))
                print(json.dumps(result["durability"][-1]), flush=True)
        if "recommend" not in args.skip:
            result["recommend"] = recommend_latency(package, str(work / "recommend.sqlite3"), args, users, items)
        if "engine" not in args.skip:
            result["engine"] = engine_latency(package, str(work / "engine.sqlite3"), users, items, args.requests)
    finally:
        if server is not None:
            server.cleanup()
    result["load_after"] = os.getloadavg()[0]
    result.setdefault("throughput", [])
    (Path(args.out) / "feedback.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (Path(args.out) / "feedback.md").write_text(text)
    print(text)
    print(f"load average {result['load_before']:.2f} before, {result['load_after']:.2f} after")


if __name__ == "__main__":
    main()
