"""Limits on what a flow run accepts: deployments are triggered from the Prefect UI and API.

Anyone who can start a deployment chooses its parameters, so a parameter
must not be able to point a stage at a directory to replace, read a file
outside the project, reach a Dask scheduler elsewhere (Dask deserialises
pickles) or write anywhere on disk. Everything is checked before any stage
runs; a refusal is one ``RecforgeError`` line.
"""

from __future__ import annotations

from pathlib import Path

from recforge.errors import RecforgeError

MAX_OVERRIDES = 50
MAX_OVERRIDE_CHARS = 500
MAX_K = 1000
MAX_BATCH_USERS = 100_000
# keys a run may not change from the UI: where outputs go, which scheduler runs the work, the token
LOCKED_PREFIXES = ("paths", "orchestration.dask_address", "serve.api_token")
# params whose values are files the run reads: they must lie inside the project
INPUT_FILE_KEYS = ("data.path", "data.metadata_path", "data.items_path")


def inside(path: str | Path, root: Path, what: str) -> Path:
    """``path`` resolved against ``root``; an error when it escapes ``root``."""
    resolved = (root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise RecforgeError(f"{what} '{path}' is outside the project directory {root}")
    return resolved


def check_run(params_file: str, overrides: list[str] | None, root: Path | None = None) -> list[str]:
    """Validate a flow's ``params_file`` and ``overrides``; return the overrides."""
    root = (root or Path.cwd()).resolve()
    overrides = list(overrides or [])
    if Path(params_file).suffix not in (".yaml", ".yml"):
        raise RecforgeError(f"params_file '{params_file}' must be a .yaml file")
    inside(params_file, root, "params_file")
    if len(overrides) > MAX_OVERRIDES:
        raise RecforgeError(f"{len(overrides)} overrides; at most {MAX_OVERRIDES}")
    for override in overrides:
        if not isinstance(override, str) or len(override) > MAX_OVERRIDE_CHARS or "=" not in override:
            raise RecforgeError(f"override must be 'section.key=value' of at most {MAX_OVERRIDE_CHARS} characters")
        key, _, value = override.partition("=")
        key = key.strip()
        if key.startswith(LOCKED_PREFIXES):
            raise RecforgeError(f"override '{key}' is not allowed from a flow run (set it in the params file)")
        if key in INPUT_FILE_KEYS and value.strip() not in ("", "null", "~"):
            inside(value.strip(), root, key)
    return overrides


def check_batch(k: int, batch_users: int, output: str | None, recs_dir: str, root: Path | None = None) -> None:
    """Bounds of the batch flow; ``output`` must lie under ``paths.recs_dir``."""
    if not 1 <= k <= MAX_K:
        raise RecforgeError(f"k={k}: must be between 1 and {MAX_K}")
    if not 1 <= batch_users <= MAX_BATCH_USERS:
        raise RecforgeError(f"batch_users={batch_users}: must be between 1 and {MAX_BATCH_USERS}")
    if output is not None:
        root = (root or Path.cwd()).resolve()
        if not output.endswith(".parquet"):
            raise RecforgeError(f"output '{output}' must be a .parquet file")
        target, recs = inside(output, root, "output"), (root / recs_dir).resolve()
        if recs not in target.parents:
            raise RecforgeError(f"output '{output}' must lie under paths.recs_dir ({recs_dir})")
