"""Encoder throughput: texts/s for each registered encoder, as a table.

    .venv/bin/python bench/encoders.py --n 2000
    .venv/bin/python bench/encoders.py --format movielens-latest --path ../shared/data/ml-latest-small --n 3650

Texts are item documents (the encode stage's ``item_texts`` over title, text
and genres) from synthetic data or a dataset. For each encoder: the time to
load/fit it on the texts, then the texts/s of ``encode`` (after a short
warm-up, model load excluded), wall-clock and per CPU-second of the process
(all its threads): on a shared machine the wall-clock figure is noisy, the
CPU figure much less so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_texts(fmt: str, path: str | None, n: int) -> list[str]:
    from recforge.data.loaders import load
    from recforge.params import DataParams, SyntheticParams
    from recforge.text import item_texts

    if fmt == "synthetic":
        params = DataParams(
            format="synthetic", synthetic=SyntheticParams(num_items=max(n, 2), num_users=50, num_interactions=500)
        )
    else:
        params = DataParams(format=fmt, path=path)
    items = load(params).items
    texts = item_texts(items, ["title", "text", "genres"])
    while len(texts) < n:  # repeat a small catalogue
        texts = texts + texts
    return texts[:n]


def bench(name: str, texts: list[str], batch_size: int, options: dict) -> dict:
    import numpy as np

    from recforge import registry

    started = time.perf_counter()
    encoder = registry.encoders.create(name, **options)
    encoder.fit(texts)
    dim = encoder.dim  # loads lazily-loaded models
    encoder.encode(texts[: min(8, len(texts))], batch_size=batch_size)  # warm-up
    setup_s = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    vectors = encoder.encode(texts, batch_size=batch_size)
    encode_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    assert vectors.shape == (len(texts), dim) and vectors.dtype == np.float32
    return {
        "encoder": name,
        "dim": dim,
        "texts": len(texts),
        "fit_load_s": round(setup_s, 2),
        "encode_s": round(encode_s, 2),
        "texts_per_s": round(len(texts) / encode_s, 1) if encode_s > 0 else float("inf"),
        "cpu_s": round(cpu_s, 2),
        "texts_per_cpu_s": round(len(texts) / cpu_s, 1) if cpu_s > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of texts (default 1000)")
    parser.add_argument("--encoders", nargs="*", default=None, help="default: every registered encoder")
    parser.add_argument("--format", default="synthetic", help="data.format of the texts (default synthetic)")
    parser.add_argument("--path", default=None, help="data.path for a real dataset")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--llm-max-length", type=int, default=64, help="tokens per text for the llm encoder")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from recforge import registry

    texts = load_texts(args.format, args.path, args.n)
    names = args.encoders or registry.encoders.names()
    rows = []
    for name in names:
        options = {"max_length": args.llm_max_length} if name == "llm" else {}
        rows.append(bench(name, texts, args.batch_size, options))
        print(f"  {name}: {rows[-1]['texts_per_s']} texts/s", file=sys.stderr, flush=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"encoder throughput, {len(texts)} {args.format} item texts, batch {args.batch_size}")
    for column in ("encoder", "dim", "fit/load s", "encode s", "texts/s", "encode CPU s", "texts/CPU-s"):
        table.add_column(column, justify="left" if column == "encoder" else "right")
    for row in rows:
        table.add_row(
            row["encoder"],
            str(row["dim"]),
            f"{row['fit_load_s']:.2f}",
            f"{row['encode_s']:.2f}",
            f"{row['texts_per_s']:.1f}",
            f"{row['cpu_s']:.2f}",
            f"{row['texts_per_cpu_s']:.1f}",
        )
    Console(width=140).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
