"""Full against sampled softmax for the sequence models: seconds per epoch and test NDCG@10.

    .venv/bin/python bench/sequence_loss.py --users 15000 --items 5000 --events 300000 --epochs 8
    .venv/bin/python bench/sequence_loss.py --users 50000 --items 100000 --events 1000000 --epochs 3 --losses sampled

Synthetic data (recforge.data.synthetic, 16 topics, seed 0), leave-last-out: each
user's last event is the test target, the model is fitted on the rest for a
fixed number of epochs (no early stopping, so both losses get the same budget)
and NDCG@10 / Recall@10 are computed over the full catalogue with the history
excluded (recforge.metrics). Prints one markdown row per (cell, loss, threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=15_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cells", nargs="+", default=["gru", "sasrec"])
    parser.add_argument("--losses", nargs="+", default=["full", "sampled"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--negatives", type=int, default=1024)
    args = parser.parse_args()

    from recforge.data.synthetic import generate
    from recforge.interactions import IdMaps, Interactions
    from recforge.metrics import ranking_metrics
    from recforge.params import SyntheticParams
    from recforge.protocols import FitContext
    from recforge.ranking import batched

    from recforge_plugins.recommenders.sequential import Sequential

    synthetic = SyntheticParams(
        num_users=args.users, num_items=args.items, num_interactions=args.events, num_topics=16, seed=0
    )
    frame, items = generate(synthetic)
    maps = IdMaps.build(frame, items)
    events = Interactions.from_frame(frame, maps)
    last = np.r_[np.nonzero(np.diff(events.user_ids))[0], len(events) - 1]
    keep = np.ones(len(events), dtype=bool)
    keep[last] = False
    train = Interactions(
        events.user_ids[keep], events.item_ids[keep], events.timestamps[keep], None, events.n_users, events.n_items
    )
    users, targets = events.user_ids[last].astype(np.int64), events.item_ids[last].astype(np.int64)
    context = FitContext(items=items, maps=maps, seed=0)
    print(f"{len(train):,} training events, {events.n_users:,} users, {events.n_items:,} items, {args.epochs} epochs")
    print("| cell | loss | threads | s/epoch | CPU s/epoch | test NDCG@10 | test Recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for cell in args.cells:
        for threads in args.threads:
            for loss in args.losses:
                model = Sequential(
                    cell=cell,
                    max_len="auto",
                    batch_size="auto",
                    epochs=args.epochs,
                    loss=loss,
                    negatives=args.negatives,
                    threads=threads,
                )
                wall, cpu = time.perf_counter(), time.process_time()
                model.fit(train, context=context)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                top = np.zeros((len(users), 10), dtype=np.int64)
                for part in batched(len(users), 1024):
                    top[part] = model.recommend(users[part], k=10)[0]
                metrics = ranking_metrics(top, targets, 10, metrics=("ndcg", "recall"))
                print(
                    f"| {cell} | {loss} | {threads} | {wall / args.epochs:.1f} | {cpu / args.epochs:.1f} "
                    f"| {metrics['ndcg@10']:.4f} | {metrics['recall@10']:.4f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
