"""Read access to what earlier stages wrote, with paths from params.yaml."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.encoding import stage_encoder
from recforge.errors import RecforgeError
from recforge.interactions import IdMaps, Interactions
from recforge.params import Params
from recforge.protocols import Encoder, FitContext

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class Workspace:
    """Lazy, cached views of the canonical tables, the split and the embeddings."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.paths = params.paths
        self._events: dict[str, Interactions] = {}

    def _read(self, path: Path, stage: str) -> pd.DataFrame:
        if not path.exists():
            raise RecforgeError(f"{path}: not found; run `recforge stage {stage}` first")
        return pd.read_parquet(path)

    @cached_property
    def items(self) -> pd.DataFrame:
        return self._read(Path(self.paths.canonical_dir) / "items.parquet", "ingest")

    @cached_property
    def interactions(self) -> pd.DataFrame:
        return self._read(Path(self.paths.canonical_dir) / "interactions.parquet", "ingest")

    @cached_property
    def users(self) -> pd.DataFrame | None:
        path = Path(self.paths.canonical_dir) / "users.parquet"
        return pd.read_parquet(path) if path.exists() else None

    @cached_property
    def maps(self) -> IdMaps:
        return IdMaps.build(self.interactions, self.items)

    def frame(self, part: str) -> pd.DataFrame:
        return self._read(Path(self.paths.split_dir) / f"{part}.parquet", "split")

    def events(self, part: str) -> Interactions:
        """Dense-index events of one split part, or 'train+val'."""
        if part == "train+val":
            return self.events("train").concat(self.events("val"))
        if part not in self._events:
            self._events[part] = Interactions.from_frame(self.frame(part), self.maps)
        return self._events[part]

    def embeddings(self, encoder: str) -> np.ndarray:
        """Item embeddings of ``encoder`` (rows aligned with the items table)."""
        path = Path(self.paths.embeddings_dir) / f"{encoder}.npy"
        if not path.exists():
            raise RecforgeError(
                f"{path}: not found; add '{encoder}' to encode.encoders and run `recforge stage encode`"
            )
        array = np.load(path, allow_pickle=False)
        if len(array) != len(self.items):
            raise RecforgeError(
                f"{path}: {len(array)} rows for {len(self.items)} items; re-run `recforge stage encode`"
            )
        return array

    def encoder_and_embeddings(self, encoder: str) -> tuple[Encoder, np.ndarray]:
        """Encoder ``encoder`` fitted as the encode stage fits it, and its item embeddings."""
        return stage_encoder(self.params, encoder, self.items)

    def _profiles(self, part: str, encoders: Sequence[str]):
        """The encode stage's ``UserProfiles`` of ``part`` ('val': from train, 'full': from train + val) holding
        those of ``encoders`` it wrote; None when it wrote none of them."""
        from recforge.profiles import UserProfiles, part_dir

        return UserProfiles.load_available(part_dir(self.params, part), encoders)

    def written_profiles(self, part: str, encoders: Sequence[str]) -> dict[str, np.ndarray]:
        """The encode stage's user profile vectors of ``part`` for those of ``encoders`` it wrote."""
        profiles = self._profiles(part, encoders)
        return {} if profiles is None else dict(profiles.vectors)

    def fitted_profiles(self, encoder: str, events: Interactions) -> np.ndarray | None:
        """``encoder``'s profile vectors that the encode stage built from exactly ``events`` (the part, val or
        full, whose per-user event counts are those of ``events``) with the current weighting
        (``encode.profile_*``); None when there are none, or none fresh (say the split or the settings
        changed after the encode stage ran), so a model computes its own."""
        from recforge.profiles import PARTS, WEIGHTING, settings_from_params

        counts = np.bincount(events.user_ids, minlength=events.n_users)
        current = settings_from_params(self.params).weighting
        for part in PARTS:
            profiles = self._profiles(part, [encoder])
            if profiles is None or profiles.counts is None or not np.array_equal(profiles.counts, counts):
                continue
            if tuple(profiles.settings.get(key) for key in WEIGHTING) == current:
                return profiles.vectors[encoder]
        log.info(
            "profiles: none for %s built from these events with these settings; the model computes its own", encoder
        )
        return None

    def context(self, *, validation: Interactions | None = None) -> FitContext:
        from recforge.profiles import settings_from_params

        encode = self.params.encode
        return FitContext(
            items=self.items,
            maps=self.maps,
            embeddings=self.embeddings,
            encoder_and_embeddings=self.encoder_and_embeddings,
            text_fields=list(encode.fields),
            users=self.users,
            user_fields=list(encode.user_fields),
            profile_settings=settings_from_params(self.params),
            validation=validation,
            profiles=self.fitted_profiles,
            seed=self.params.seed,
            device=resolve_device(self.params.device),
        )


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"
