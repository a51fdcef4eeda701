"""Download public datasets for users with network access."""

from __future__ import annotations

import io
import logging
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from recforge.artifacts import atomic_dir
from recforge.errors import RecforgeError

log = logging.getLogger(__name__)

DATASETS = {
    "movielens-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "movielens-100k"),
    "movielens-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "movielens-1m"),
    "movielens-latest-small": (
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        "movielens-latest",
    ),
}


def download(name: str, dest: str | Path = "data/raw", timeout: float = 20.0) -> tuple[Path, str]:
    """Fetch and unpack ``name`` under ``dest``; return (directory, data.format to use)."""
    if name not in DATASETS:
        raise RecforgeError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    url, data_format = DATASETS[name]
    target = Path(dest) / name
    try:
        # url is one of the fixed https addresses in DATASETS, never user input
        with urllib.request.urlopen(url, timeout=timeout) as response:  # nosec B310
            payload = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RecforgeError(
            f"cannot download {name} from {url} ({reason}); offline, download it elsewhere and pass "
            f"-S data.format={data_format} -S data.path=<local directory>"
        ) from None
    with atomic_dir(target) as staging, zipfile.ZipFile(io.BytesIO(payload)) as archive:
        for member in archive.infolist():
            parts = Path(member.filename).parts[1:]  # drop the archive's top folder
            if member.is_dir() or not parts or ".." in parts:
                continue
            out = staging.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(member))
    return target, data_format
