"""Sequential recommenders in PyTorch: GRU, LSTM and a SASRec-style causal
self-attention encoder, trained with cross-entropy on the next item at every
position of each user's history: over the whole catalogue (full softmax), or,
for large catalogues, over the target and a shared sample of negatives with the
logQ correction (sampled softmax, Yi et al. 2019 / Bengio & Senecal 2008;
``loss: auto`` chooses by catalogue size, see :data:`FULL_SOFTMAX_FACTOR`).

Training windows: each user's time-ordered history is cut, from its end, into
windows of ``max_len + 1`` items (stride ``max_len``) so every event is a target
once per epoch. The output layer shares the item embedding table (tied weights)
plus a per-item bias. With ``context.validation`` present, training stops early on
validation NDCG@10 (full ranking, history excluded; at least ``min_epochs``
epochs, ``patience`` epochs without improvement) and the best epoch's weights are
kept; ``refit_options()`` then returns that epoch count so the train+val refit
trains exactly that long without validation, or, with ``refit: warm``,
``warm_refit`` continues from the validation fit's weights for
:func:`warm_refit_epochs` epochs instead of training again from scratch.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recforge.interactions import Interactions, csr_from_arrays, csr_to_arrays
from recforge.metrics import ranking_metrics
from recforge.protocols import FitContext
from recforge.ranking import batched, history_row, top_k
from recforge.sizing import AUTO, is_auto, sequence_sizes
from recforge.threads import resolve_threads
from recforge.vectors import l2_normalize

log = logging.getLogger(__name__)

CELLS = ("gru", "lstm", "sasrec")
EARLY_STOPPING = ("validation", "inner")  # what the epoch is chosen on (see Sequential)
LOSSES = ("auto", "full", "sampled")
REFITS = ("scratch", "warm")
# ``loss: auto``: the full softmax up to FULL_SOFTMAX_FACTOR x ``negatives`` items (4,096 with the default 1,024),
# the sampled one above: there the sample is at most a quarter of the catalogue, so the output layer costs at
# least 4x less a step. Measured (docs/orchestration.md, "The quality profile at scale"): at 5,000 items GRU's
# epoch costs 3.7x less CPU sampled, for 0.0495 against 0.0506 NDCG@10 after the same 6 epochs.
FULL_SOFTMAX_FACTOR = 4
NEGATIVES_RANGE = (16, 65_536)
SIZES = ("max_len", "batch_size", "epochs")  # may be "auto": chosen from the training data (recforge.sizing)


SIZE_LIMITS = {"max_len": 10_000, "batch_size": 65_536, "epochs": 10_000}
SEED_OFFSET_MAX = 2**31


def _size(value: int | str, name: str) -> int | str:
    """A size option: 'auto', or an integer in [1, SIZE_LIMITS[name]] (one-line error otherwise)."""
    if is_auto(value):
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ValueError(f"{name} must be an integer in [1, {SIZE_LIMITS[name]}] or 'auto', got {value!r}")
    if not 1 <= int(value) <= SIZE_LIMITS[name]:
        raise ValueError(f"{name} must be an integer in [1, {SIZE_LIMITS[name]}] or 'auto', got {value!r}")
    return int(value)


def _seed_offset(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_OFFSET_MAX:
        raise ValueError(f"seed_offset must be an integer in [0, {SEED_OFFSET_MAX}], got {value!r}")
    return value


# torch's random generator (initial weights, dropout) and its intra-op thread count belong to the process: two
# models trained at once in one process's threads (the flow's local runner) drew from one generator in an order
# set by the threads' timing, so a run's weights changed from run to run. A process trains one model at a time;
# models in other processes (train.workers, Dask workers) are not held.
_TRAINING = threading.RLock()


def _one_at_a_time(method):
    @functools.wraps(method)
    def held(*args, **kwargs):
        with _TRAINING:
            return method(*args, **kwargs)

    return held


def _torch():
    import torch

    return torch


def _set_threads(threads: int | str | None) -> None:
    """Use the given number of intra-op threads (``auto``/None: every available core, recforge.threads)."""
    torch = _torch()
    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def warm_refit_epochs(best_epoch: int, train_events: int, added_events: int) -> int:
    """Epochs the warm refit adds: ``ceil(best_epoch * added / train)``, at least 1.

    The validation fit saw each training event ``best_epoch`` times; the refit gives the events it
    adds (the validation split) the same share of passes over the data it is now fitted on. With
    leave-last-out (one event per user, a few per cent of the events) that is one epoch over the
    train+val windows: the old events once more, each new event once as a target.
    """
    if train_events <= 0:
        return max(1, int(best_epoch))
    return max(1, math.ceil(int(best_epoch) * max(added_events, 0) / train_events))


def _build_network(cell: str, n_items: int, dim: int, layers: int, heads: int, dropout: float, max_len: int):
    """The encoder network; item index 0 is padding, item ``i`` is row ``i + 1``."""
    torch = _torch()
    nn = torch.nn

    class SequenceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell
            self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
            self.bias = nn.Parameter(torch.zeros(n_items))
            self.dropout = nn.Dropout(dropout)
            if cell == "sasrec":
                self.positions = nn.Embedding(max_len, dim)
                layer = nn.TransformerEncoderLayer(
                    dim,
                    heads,
                    dim_feedforward=dim * 2,
                    dropout=dropout,
                    batch_first=True,
                    norm_first=True,
                    activation="gelu",
                )
                self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
                self.norm = nn.LayerNorm(dim)
            else:
                rnn = nn.GRU if cell == "gru" else nn.LSTM
                self.rnn = rnn(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
                self.norm = nn.LayerNorm(dim)
            nn.init.normal_(self.items.weight, std=dim**-0.5)
            with torch.no_grad():
                self.items.weight[0].zero_()

        def forward(self, sequences):
            """Hidden states [batch, length, dim] for left-padded item sequences."""
            x = self.items(sequences) * math.sqrt(dim)
            if self.cell == "sasrec":
                length = sequences.shape[1]
                # positions count back from the most recent item, so left padding (which
                # varies with the batch) never shifts them
                positions = torch.arange(length - 1, -1, -1, device=sequences.device)
                x = x + self.positions(positions)[None]
                x = self.dropout(x)
                # causal, padded keys blocked; every position may attend to itself so that
                # no row is fully blocked (that would give NaN that leaks through later layers)
                blocked = torch.triu(torch.ones(length, length, dtype=torch.bool, device=sequences.device), 1)
                blocked = blocked[None] | (sequences == 0)[:, None, :]
                blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=sequences.device)[None]
                blocked = blocked.repeat_interleave(heads, dim=0)
                h = self.encoder(x, mask=blocked)
            else:
                h, _ = self.rnn(self.dropout(x))
            return self.norm(h)

        def logits(self, hidden):
            return hidden @ self.items.weight[1:].T + self.bias

        def pad_states(self, width: int) -> list:
            """Recurrent cells: the state after 0..``width`` leading pads (the same for every history, as the
            pad's input is its embedding row), one step at a time, as the full pass computes them."""
            pad = self.items(torch.zeros((1, 1), dtype=torch.long, device=self.bias.device)) * math.sqrt(dim)
            states, state = [None], None
            for _ in range(width):
                _, state = self.rnn(self.dropout(pad), state)
                states.append(state)
            return states

        def forward_from(self, sequences, state):
            """Recurrent cells: :meth:`forward` of unpadded ``sequences`` continued from ``state`` (the state
            after their pads, :meth:`pad_states`): the pads' steps are not run again."""
            h, _ = self.rnn(self.dropout(self.items(sequences) * math.sqrt(dim)), state)
            return self.norm(h)

    return SequenceNet()


class Sequential:
    """Next-item model over each user's time-ordered history.

    Options: ``cell`` (gru | lstm | sasrec), ``dim``, ``layers``, ``heads``
    (sasrec), ``dropout``, ``max_len`` (history items the model reads),
    ``lr`` (Adam; 3e-3 learns much faster than 1e-3 here), ``weight_decay``,
    ``batch_size`` (windows per step), ``epochs`` (the maximum with validation,
    the exact count without), ``min_epochs``, ``patience``, ``threads`` (torch
    intra-op threads: ``auto``, the default, is every available core; a fit is identical for the same
    seed and thread count), ``device`` (default: the
    context's, i.e. CUDA when present), ``seed`` (default: the run's), ``seed_offset``
    (added to it: a second copy of a model with another initialisation follows
    the run's seed too). ``max_len``, ``batch_size``
    and ``epochs`` may be ``auto``: chosen from the training histories by
    :func:`recforge.sizing.sequence_sizes` and saved as numbers.

    ``early_stopping`` says what the best epoch is chosen on when the fit is
    given validation events: ``validation`` (those events) or ``inner`` (each
    user's last training event, held out of the windows while training; the
    validation events are then not read at all). With a re-ranker, ``inner``
    keeps the re-ranker's training labels (the validation events) from also
    choosing the epoch of a model whose lists it learns from (docs/rerank.md).
    The fitted model recommends from the whole training history either way.

    ``loss``: ``full`` (softmax over every item), ``sampled`` (the target
    against ``negatives`` items drawn once per batch from the training
    targets' popularity, shared by every position, each logit corrected by
    ``-log(negatives * q(item))``; a negative equal to the target is masked) or
    ``auto`` (full up to :data:`FULL_SOFTMAX_FACTOR` x ``negatives`` items,
    sampled above; saved resolved). ``refit``: ``scratch`` (the train stage refits a fresh
    model for the best epoch count) or ``warm`` (:meth:`warm_refit`).
    """

    def __init__(
        self,
        cell: str = "sasrec",
        dim: int = 64,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        max_len: int | str = 50,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        batch_size: int | str = 128,
        epochs: int | str = 30,
        min_epochs: int = 5,
        patience: int = 5,
        threads: int | str | None = None,
        device: str | None = None,
        seed: int | None = None,
        seed_offset: int = 0,
        early_stopping: str = "validation",
        loss: str = "auto",
        negatives: int = 1024,
        refit: str = "scratch",
    ) -> None:
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if refit not in REFITS:
            raise ValueError(f"refit must be one of {REFITS}, got {refit!r}")
        if isinstance(negatives, bool) or not isinstance(negatives, int):
            raise ValueError(f"negatives must be an integer in {list(NEGATIVES_RANGE)}, got {negatives!r}")
        if not NEGATIVES_RANGE[0] <= negatives <= NEGATIVES_RANGE[1]:
            raise ValueError(f"negatives must be an integer in {list(NEGATIVES_RANGE)}, got {negatives!r}")
        resolve_threads(threads)  # a bad value fails here, in one line, not at fit time
        self.config: dict[str, Any] = dict(
            cell=cell,
            dim=int(dim),
            layers=int(layers),
            heads=int(heads),
            dropout=float(dropout),
            max_len=_size(max_len, "max_len"),
            lr=float(lr),
            weight_decay=float(weight_decay),
            batch_size=_size(batch_size, "batch_size"),
            epochs=_size(epochs, "epochs"),
            min_epochs=int(min_epochs),
            patience=int(patience),
            threads=threads,
            device=device,
            seed=seed,
            seed_offset=_seed_offset(seed_offset),
            early_stopping=early_stopping,
            loss=loss,
            negatives=int(negatives),
            refit=refit,
        )
        self.net = None
        self.n_items = 0
        self.seen: sp.csr_matrix | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self._device = "cpu"
        self._output: tuple[np.ndarray, np.ndarray] | None = None  # numpy output layer for recommend_states
        self._pads: list | None = None  # recurrent cells: the state after n pads (recommend_history)
        self._auto: list[str] = []  # the sizes the last fit chose from the data
        self._proposal: np.ndarray | None = None  # the sampled loss's item distribution (training only)

    # -- training -----------------------------------------------------------

    def _windows(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Left-padded windows of max_len + 1 shifted item indices (0 = pad)."""
        width = self.config["max_len"] + 1
        rows = []
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64) + 1
            end = len(seq)
            while end >= 2:
                start = max(0, end - width)
                row = np.zeros(width, dtype=np.int64)
                row[width - (end - start) :] = seq[start:end]
                rows.append(row)
                end = start + 1 if start > 0 else 0
        return np.stack(rows) if rows else np.zeros((0, width), dtype=np.int64)

    @_one_at_a_time
    def fit(self, train: Interactions, *, context: FitContext) -> Sequential:
        cfg = self.config
        _set_threads(cfg["threads"])
        seed = (cfg["seed"] if cfg["seed"] is not None else context.seed) + cfg.get("seed_offset", 0)
        self._auto = [k for k in SIZES if is_auto(cfg[k])]
        if self._auto:  # sizes from the training histories (recforge.sizing); saved resolved
            cfg.update(sequence_sizes([len(s) for s in train.sequences], **{k: cfg[k] for k in SIZES}))
        if cfg["loss"] == "auto":
            cfg["loss"] = "full" if train.n_items <= FULL_SOFTMAX_FACTOR * cfg["negatives"] else "sampled"
            log.info("sequential[%s]: %d items -> %s softmax", cfg["cell"], train.n_items, cfg["loss"])
        self._device = cfg["device"] or context.device or "cpu"
        self._set_data(train)
        _torch().manual_seed(seed)
        self.net = _build_network(
            cfg["cell"], self.n_items, cfg["dim"], cfg["layers"], cfg["heads"], cfg["dropout"], cfg["max_len"]
        ).to(self._device)
        stopping = self._stopping_targets(context.validation)
        windows = self._windows(stopping[3] if stopping is not None else self.sequences)
        self.history = []
        self._train_epochs(windows, cfg["epochs"], stopping, np.random.default_rng(seed), context)
        return self

    def _set_data(self, train: Interactions) -> None:
        self.n_items = train.n_items
        self.seen = train.csr
        self._output = self._pads = None
        self.sequences = [np.asarray(s, dtype=np.int32) for s in train.sequences]
        # the sampled loss's proposal: the training targets' popularity (+1, so no item is never drawn)
        counts = np.bincount(train.item_ids, minlength=self.n_items).astype(np.float64) + 1.0
        self._proposal = counts / counts.sum()

    def _train_epochs(self, windows: np.ndarray, epochs: int, stopping, rng, context: FitContext) -> None:
        """Train ``epochs`` epochs over ``windows`` (early-stopping on ``stopping`` when given), keep the best."""
        torch = _torch()
        cfg = self.config
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        best, best_state, stale = -1.0, None, 0
        cdf = np.cumsum(self._proposal)
        log_q = torch.from_numpy(np.log(self._proposal * cfg["negatives"]).astype(np.float32)).to(self._device)
        first_epoch = len(self.history) + 1
        for epoch in range(first_epoch, first_epoch + epochs):
            started = time.perf_counter()
            self.net.train()
            order = rng.permutation(len(windows))
            total, count = 0.0, 0
            for part in batched(len(order), cfg["batch_size"]):
                batch = windows[order[part]]
                # trim left columns that are padding in every row of the batch
                first = int((batch != 0).argmax(axis=1).min())
                batch = torch.from_numpy(batch[:, first:]).to(self._device)
                inputs, targets = batch[:, :-1], batch[:, 1:]
                mask = (targets != 0) & (inputs != 0)
                hidden = self.net(inputs)[mask]
                if cfg["loss"] == "sampled":
                    drawn = np.minimum(np.searchsorted(cdf, rng.random(cfg["negatives"])), self.n_items - 1)
                    loss = self._sampled_loss(
                        hidden, targets[mask] - 1, torch.from_numpy(drawn).to(self._device), log_q
                    )
                else:
                    loss = torch.nn.functional.cross_entropy(self.net.logits(hidden), targets[mask] - 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * int(mask.sum())
                count += int(mask.sum())
            record = {"epoch": epoch, "loss": total / max(count, 1), "seconds": time.perf_counter() - started}
            if stopping is not None:
                record["val_ndcg@10"] = self._val_ndcg(*stopping)
                score = record["val_ndcg@10"]
                if score > best:
                    best, stale, self.best_epoch = score, 0, epoch
                    best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
                else:
                    stale += 1
            self.history.append(record)
            log.info("sequential[%s] epoch %d %s", cfg["cell"], epoch, {k: round(v, 4) for k, v in record.items()})
            if context.progress is not None:
                context.progress(f"epoch {epoch}", (epoch - first_epoch + 1) / epochs)
            if stopping is not None and epoch >= cfg["min_epochs"] and stale >= cfg["patience"]:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        else:
            self.best_epoch = len(self.history)
        self.net.eval()

    def _sampled_loss(self, hidden, targets, negatives, log_q):
        """Sampled softmax with the logQ correction: the target against the batch's shared ``negatives``."""
        torch = _torch()
        weights, bias = self.net.items.weight[1:], self.net.bias
        positive = (hidden * weights[targets]).sum(-1) + bias[targets] - log_q[targets]
        negative = hidden @ weights[negatives].T + (bias[negatives] - log_q[negatives])
        negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
        logits = torch.cat([positive[:, None], negative], dim=1)
        return torch.nn.functional.cross_entropy(
            logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        )

    @_one_at_a_time
    def warm_refit(self, train: Interactions, *, context: FitContext) -> Sequential | None:
        """WarmRefit: with ``refit: warm``, a new model that continues this fit's chosen weights on ``train``
        (train + val) for :func:`warm_refit_epochs` epochs, no early stopping; None with ``refit: scratch``."""
        if self.config["refit"] != "warm":
            return None
        if train.n_items != self.n_items:
            raise ValueError(f"warm refit: {train.n_items} items, the validation fit had {self.n_items}")
        cfg = dict(self.config)
        seen_before = sum(len(s) for s in self.sequences)
        epochs = warm_refit_epochs(self.best_epoch or cfg["epochs"], seen_before, len(train.item_ids) - seen_before)
        model = Sequential(**{**cfg, "epochs": epochs})
        model.config.update({k: cfg[k] for k in SIZES if k != "epochs"})
        model._device = self._device
        _set_threads(cfg["threads"])
        model._set_data(train)
        model.net = _build_network(
            cfg["cell"], model.n_items, cfg["dim"], cfg["layers"], cfg["heads"], cfg["dropout"], cfg["max_len"]
        ).to(model._device)
        model.net.load_state_dict(self.net.state_dict())
        model.history = [dict(r, part="validation fit") for r in self.history[: self.best_epoch or len(self.history)]]
        seed = (cfg["seed"] if cfg["seed"] is not None else context.seed) + cfg.get("seed_offset", 0) + 1
        _torch().manual_seed(seed)
        model._train_epochs(model._windows(model.sequences), epochs, None, np.random.default_rng(seed), context)
        model.best_epoch = len(model.history)
        log.info("sequential[%s]: warm refit, %d epoch(s) after epoch %s", cfg["cell"], epochs, self.best_epoch)
        return model

    def _stopping_targets(self, validation: Interactions | None):
        """(users, target items, seen matrix, history sequences) the epoch is chosen on, or None (no early stop).

        ``validation``: each validation user's first validation item, read after
        their whole training history. ``inner``: each user with at least 3
        training events has their last one held out (the windows are cut from
        the shortened histories, returned here) and read after the rest.
        """
        if validation is None or not len(validation):
            return None
        if self.config["early_stopping"] == "validation":
            users = np.unique(validation.user_ids)
            targets = validation.item_ids[np.searchsorted(validation.user_ids, users)]
            return users, targets, self.seen, self.sequences
        lengths = np.array([len(seq) for seq in self.sequences])
        users = np.flatnonzero(lengths >= 3)
        if not len(users):
            return None
        targets = np.array([self.sequences[u][-1] for u in users], dtype=np.int64)
        shortened = [seq[:-1] if len(seq) >= 3 else seq for seq in self.sequences]
        # what the shortened histories have seen: a held-out item stays unseen unless the user met it earlier
        rows = np.repeat(np.arange(len(shortened)), [len(seq) for seq in shortened])
        seen = Interactions(rows, np.concatenate(shortened), None, None, self.seen.shape[0], self.seen.shape[1]).csr
        return users, targets, seen, shortened

    def _val_ndcg(self, users: np.ndarray, targets: np.ndarray, seen: sp.csr_matrix, sequences, k: int = 10) -> float:
        """NDCG@k of one target per user, read after ``sequences[user]`` (full ranking, ``seen`` excluded)."""
        top = np.full((len(users), k), -1, dtype=np.int64)
        for part in batched(len(users), 512):
            scores = self._scores([sequences[u] for u in users[part]])
            top[part] = top_k(scores, k, seen=seen[users[part]])[0]
        return ranking_metrics(top, targets, k, metrics=("ndcg",))[f"ndcg@{k}"] if len(users) else 0.0

    def refit_options(self) -> dict[str, Any]:
        """The best validation epoch count, for the train+val refit (no validation there); sizes chosen
        from the data (``auto``) are passed on too, so the refit reads windows of the same shape."""
        sizes = {k: self.config[k] for k in self._auto if k != "epochs"}
        return {**sizes, "epochs": int(self.best_epoch or self.config["epochs"])}

    # -- scoring ------------------------------------------------------------

    def _user_vectors(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Final hidden state for each history (zeros for an empty history)."""
        torch = _torch()
        width = self.config["max_len"]
        batch = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            seq = np.asarray(seq, dtype=np.int64)[-width:] + 1
            if len(seq):
                batch[row, width - len(seq) :] = seq
        if self.config["cell"] == "sasrec":  # padding is masked: trimming shared left padding changes nothing
            first = int((batch != 0).argmax(axis=1).min()) if (batch != 0).any() else width - 1
        else:
            # a recurrent state depends on the pads it ran over: always max_len wide, as in training
            # (nearly every training batch holds a full window), so a user's scores never depend on the batch
            first = 0
        self.net.eval()
        with torch.no_grad():
            hidden = self.net(torch.from_numpy(batch[:, first:]).to(self._device))[:, -1]
        return hidden

    def _scores(self, sequences: list[np.ndarray]) -> np.ndarray:
        torch = _torch()
        with torch.no_grad():
            return self.net.logits(self._user_vectors(sequences)).float().cpu().numpy()

    def recommend(self, user_ids, *, k, exclude_seen=True, candidates=None):
        user_ids = np.asarray(user_ids)
        scores = self._scores([self.sequences[u] for u in user_ids])
        seen = self.seen[user_ids] if exclude_seen else None
        return top_k(scores, k, seen=seen, candidates=candidates)

    def recommend_history(self, item_ids, *, k, exclude_seen=True):
        """Fold-in: score the next item after an anonymous, time-ordered history."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        item_ids = item_ids[(item_ids >= 0) & (item_ids < self.n_items)]
        scores = self._history_scores(item_ids)
        seen = None
        if exclude_seen and len(item_ids):
            seen = history_row(item_ids, self.n_items)
        return top_k(scores, k, seen=seen)

    def _history_scores(self, item_ids: np.ndarray) -> np.ndarray:
        """``_scores([item_ids])`` for one history. A recurrent cell starts from the cached state after the
        history's pads instead of running over them (a 30-item session in a 70-wide window: 30 steps, not 70);
        the same computation, so the same scores (tests/unit/test_sequential_scale.py)."""
        width = self.config["max_len"]
        if self.config["cell"] == "sasrec" or not len(item_ids):
            return self._scores([item_ids])
        torch = _torch()
        seq = np.asarray(item_ids, dtype=np.int64)[-width:] + 1
        self.net.eval()
        with torch.no_grad():
            if self._pads is None:
                self._pads = self.net.pad_states(width)
            state = self._pads[width - len(seq)]
            hidden = self.net.forward_from(torch.from_numpy(seq[None]).to(self._device), state)[:, -1]
            return self.net.logits(hidden).float().cpu().numpy()

    def user_states(self) -> np.ndarray:
        """UserStates: the final hidden state of every fitted user's history ([n_users, dim] float32).

        Computed in batches; a state never depends on its batch (see ``_user_vectors``)."""
        torch = _torch()
        states = np.zeros((len(self.sequences), self.config["dim"]), dtype=np.float32)
        with torch.no_grad():
            for part in batched(len(self.sequences), 1024):
                states[part] = self._user_vectors(self.sequences[part]).float().cpu().numpy()
        return states

    def recommend_states(self, user_ids, states, *, k, exclude_seen=True):
        """UserStates: ``recommend`` for ``user_ids`` from their ``states`` (rows of ``user_states()``),
        through the output layer only (numpy, no recurrent pass)."""
        if self._output is None:
            weights = np.ascontiguousarray(self.net.items.weight[1:].detach().float().cpu().numpy())
            bias = np.broadcast_to(self.net.bias.detach().float().cpu().numpy(), (len(weights),)).astype(np.float32)
            self._output = (weights, bias)
        weights, bias = self._output
        user_ids = np.asarray(user_ids)
        scores = np.atleast_2d(states) @ weights.T + bias
        return top_k(scores, k, seen=self.seen[user_ids] if exclude_seen else None)

    def item_embeddings(self) -> np.ndarray:
        return self.net.items.weight[1:].detach().float().cpu().numpy()

    def similar_items(self, item_id, *, k):
        """Cosine neighbours in the (tied input/output) item embedding space."""
        vectors = l2_normalize(self.item_embeddings())
        scores = (vectors @ vectors[int(item_id)])[None, :]
        itself = history_row([item_id], self.n_items)
        items, scores = top_k(scores, k, seen=itself)
        return items[0], scores[0]

    # -- persistence --------------------------------------------------------

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(directory / "network.safetensors"))
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, dtype=np.int32)
        np.savez(directory / "sequences.npz", lengths=lengths, items=flat, **csr_to_arrays(self.seen, "seen"))
        meta = {"config": self.config, "n_items": self.n_items, "best_epoch": self.best_epoch, "history": self.history}
        (directory / "config.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path, *, context: FitContext) -> Sequential:
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "config.json").read_text())
        model = cls(**meta["config"])
        model.n_items, model.best_epoch, model.history = meta["n_items"], meta["best_epoch"], meta["history"]
        with np.load(directory / "sequences.npz", allow_pickle=False) as data:
            bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
            items = data["items"]
            model.sequences = [items[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
            model.seen = csr_from_arrays(data, "seen")
        cfg = model.config
        _set_threads(cfg["threads"])
        model._device = cfg["device"] or context.device or "cpu"
        model.net = _build_network(
            cfg["cell"], model.n_items, cfg["dim"], cfg["layers"], cfg["heads"], cfg["dropout"], cfg["max_len"]
        )
        model.net.load_state_dict(load_file(str(directory / "network.safetensors")))
        model.net.to(model._device).eval()
        return model
