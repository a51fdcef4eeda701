"""GPU check: the serving Engine and the BentoML service on CUDA beside CPU, and text-encoder throughput.

    python bench/gpu.py --package <package dir> --out <dir>
    python bench/gpu.py --out <dir>                      # encoder throughput only (synthetic item texts)

Needs only a package directory (``recforge package`` writes one into the model
store; ``recforge.packaging.build_package`` writes one anywhere), so it runs on a
machine that has the GPU but not the training data. Three measurements, each on
``cuda`` and ``cpu`` of the same machine at the same moment:

1. the transformer encoder (the packaged MiniLM unless ``--encoder-model``):
   texts per second over item texts (the package's, else synthetic ones),
   batch ``--batch``; float32 on both devices and float16 on CUDA;
2. Engine calls in process (no HTTP): load seconds, then p50/p99 of
   ``recommend`` (the served model: a sequential model or the re-ranker),
   ``recommend_text``, ``recommend_history``;
3. ``bentoml serve`` of ``service/`` with ``--arg package_dir=<package>`` and
   ``--arg device=cuda``: ``/metadata`` must say ``"device": "cuda"``; then
   the load test of bench/serve.py per endpoint at concurrency 1 and 16, with
   ``/trivial`` from bench/trivial_service.py (the machine's ceiling).

Writes ``<out>/gpu.json`` and ``<out>/gpu.md``. Exits 1 when CUDA is absent or
the served device is not ``cuda``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import (  # noqa: E402
    TEXTS,
    bentoml_serve,
    bodies_for,
    free_port,
    markdown,
    run_cell,
    start_trivial,
    stop,
    wait_ready,
)


def percentiles(times: list[float]) -> dict:
    ms = np.array(times) * 1000.0
    return {
        "calls": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def encoder_throughput(texts: list[str], device: str, batch: int, model: str | None, dtype: str = "float32") -> dict:
    from recforge_plugins.encoders.transformer import TransformerEncoder

    encoder = TransformerEncoder(model=model, device=device, dtype=dtype)
    encoder.encode(texts[:batch], batch_size=batch)  # load + warm up
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    started = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=batch)
    seconds = time.perf_counter() - started
    return {
        "device": device,
        "dtype": dtype,
        "texts": len(texts),
        "batch": batch,
        "seconds": round(seconds, 3),
        "texts_per_s": round(len(texts) / seconds, 1),
        "dim": int(vectors.shape[1]),
    }


def engine_calls(package: Path, device: str, users: list, items: list, n: int, model: str | None = None) -> dict:
    from recforge.engine import Engine
    from recforge.threads import limit_threads

    started = time.perf_counter()
    engine = Engine.load(package, device=device, model=model)
    load_s = time.perf_counter() - started
    limit_threads(1)
    rng = random.Random(1)
    calls = {
        "recommend": lambda i: engine.recommend(users[i % len(users)], 10),
        "recommend_text": lambda i: engine.recommend_text(TEXTS[i % len(TEXTS)], 10),
        "recommend_history": lambda i: engine.recommend_history(rng.sample(items, 5), 10),
    }
    out = {
        "device": engine.device,
        "model": engine.primary,
        "load_s": round(load_s, 2),
        "rerank_note": engine.rerank_note,
        "text_path": engine.metadata()["text_path"],
    }
    for name, call in calls.items():
        times = []
        for i in range(n):
            begun = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - begun)
        out[name] = percentiles(times)
    return out


def http_check(package: Path, users: list, items: list, seconds: float, log_path: Path, device: str = "cuda") -> dict:
    import httpx

    port, trivial_port = free_port(), free_port()
    env = {**os.environ}
    env.pop("RECFORGE_API_TOKEN", None)
    args = {"package_dir": package, "device": device, "access_log": False}
    process = bentoml_serve("service:Recforge", ROOT / "service", port, args, log_path, env)
    trivial = start_trivial(trivial_port, log_path.with_suffix(".trivial.log"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, timeout=90)
        wait_ready(f"http://127.0.0.1:{trivial_port}", trivial, timeout=90)
        meta = httpx.get(f"{base}/metadata", timeout=10).json()
        rng = random.Random(0)
        rows = []
        for path in ["/trivial", "/recommend", "/recommend/text", "/recommend/history"]:
            target = trivial_port if path == "/trivial" else port
            bodies = bodies_for(path, users, items, 10, rng)
            asyncio.run(run_cell("127.0.0.1", target, None, path, bodies, 4, 40, 20))
            for concurrency in (1, 16):
                row = asyncio.run(run_cell("127.0.0.1", target, None, path, bodies, concurrency, 3000, seconds))
                rows.append(row)
                print(json.dumps(row), flush=True)
        return {"metadata": meta, "rows": rows}
    finally:
        stop(process)
        stop(trivial)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="a package directory (needed for the Engine and HTTP checks)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"))
    parser.add_argument(
        "--texts", type=int, default=20_000, help="texts encoded on the GPU (a tenth of them on the CPU)"
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--encoder-model", default=None, help="a local sentence-transformers directory (default: the packaged MiniLM)"
    )
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load-test cell")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--no-engine", action="store_true", help="skip the in-process Engine timings")
    parser.add_argument("--no-encoder", action="store_true")
    parser.add_argument("--rerank", action="store_true", help="also time /recommend through the packaged re-ranker")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import pandas as pd
    import torch

    result: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if not torch.cuda.is_available():
        print("CUDA is not available here", file=sys.stderr)
        return 1
    result["gpu"] = torch.cuda.get_device_name(0)
    if args.package:
        items_table = pd.read_parquet(args.package / "items.parquet")
    else:
        from recforge.data.synthetic import generate
        from recforge.params import SyntheticParams

        items_table = generate(SyntheticParams(num_users=100, num_items=5000, num_interactions=1000, seed=0))[1]
    text_column = "text" if "text" in items_table else "title" if "title" in items_table else "item_id"
    base_texts = items_table[text_column].astype(str).tolist()
    texts = [
        base_texts[i % len(base_texts)] + ("" if i < len(base_texts) else f" ({i // len(base_texts)})")
        for i in range(args.texts)
    ]
    if not args.no_encoder:
        cpu_texts = texts[: max(args.batch, args.texts // 10)]
        result["encoder"] = [
            encoder_throughput(texts, "cuda", args.batch, args.encoder_model),
            encoder_throughput(texts, "cuda", args.batch, args.encoder_model, "float16"),
            encoder_throughput(cpu_texts, "cpu", args.batch, args.encoder_model),
        ]
        print(json.dumps(result["encoder"]), flush=True)

    if args.package:
        args.package = args.package.resolve()  # the server runs in service/
        users = [
            u.item() if hasattr(u, "item") else u for u in pd.read_parquet(args.package / "users.parquet")["user_id"]
        ]
        items = [i.item() if hasattr(i, "item") else i for i in items_table["item_id"]]
    if args.package and not args.no_engine:
        result["engine"] = [
            engine_calls(args.package, "cuda", users, items, args.calls),
            engine_calls(args.package, "cpu", users, items, args.calls),
        ]
        if args.rerank:
            result["engine"] += [
                engine_calls(args.package, device, users, items, args.calls, "rerank") for device in ("cuda", "cpu")
            ]
        print(json.dumps(result["engine"]), flush=True)
    if args.package and not args.no_http:
        result["http"] = http_check(args.package, users, items, args.seconds, out / "server.log")
    (out / "gpu.json").write_text(json.dumps(result, indent=2, default=str))

    lines = [f"# GPU check: {result['gpu']}, torch {result['torch']}, {result['cpus']} CPUs", ""]
    if "encoder" in result:
        lines += ["| encoder (MiniLM) | dtype | texts | batch | texts/s |", "|---|---|---:|---:|---:|"]
        lines += [
            f"| {r['device']} | {r['dtype']} | {r['texts']} | {r['batch']} | {r['texts_per_s']} |"
            for r in result["encoder"]
        ]
    if "engine" in result:
        lines += [
            "",
            "| Engine (in process) | model | load s | recommend p50 / p99 ms | text p50 / p99 ms | history p50 / p99 ms |",
            "|---|---|---:|---:|---:|---:|",
        ]
    for r in result.get("engine", []):
        cells = " | ".join(
            f"{r[c]['p50_ms']} / {r[c]['p99_ms']}" for c in ("recommend", "recommend_text", "recommend_history")
        )
        lines.append(f"| {r['device']} | {r['model']} | {r['load_s']} | {cells} |")
    text = "\n".join(lines) + "\n"
    if "http" in result:
        meta = result["http"]["metadata"]
        ceiling = {r["concurrency"]: r["throughput_rps"] for r in result["http"]["rows"] if r["endpoint"] == "/trivial"}
        text += f"\nbentoml serve, /metadata device: **{meta['device']}**, model {meta['model']}\n\n"
        text += markdown(result["http"]["rows"], meta, ceiling)
    (out / "gpu.md").write_text(text)
    print(text)
    served_on = result.get("http", {}).get("metadata", {}).get("device", "cuda")
    engine_on = result["engine"][0]["device"] if "engine" in result else "cuda"
    return 0 if served_on == "cuda" and engine_on == "cuda" else 1


if __name__ == "__main__":
    raise SystemExit(main())
