"""Packages: what the pipeline trained, in one checked directory; the model store, the Bento and the serve command.

``build_package`` copies what the pipeline trained (the ``full`` part of every
model, embeddings and fitted encoders, user profiles, id maps, the items
table, the train+val histories, params and metrics) into one directory with a
``manifest.json`` that records the sha256 of every file. :class:`Package`
reads one back, checking those checksums and each saved plugin's own
meta.json checksums (:func:`recforge.artifacts.load_model_dir`). ``store_package`` puts a package in
the BentoML model store as ``recforge-model:<data hash>-<params hash>``;
``build_bento`` builds a Bento pinned to that exact tag; ``serve_command`` is
what ``recforge serve`` runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from recforge.artifacts import checksums, load_model_dir, plain, read_json, read_meta, sha256_file, verify_checksums
from recforge.errors import RecforgeError
from recforge.interactions import IdMaps, Interactions
from recforge.params import Params
from recforge.schemas import ServeArgs, is_loopback

log = logging.getLogger(__name__)

PACKAGE_FORMAT = 1
MODEL_NAME = "recforge-model"
# parts of params that do not change what is served (where files live, how it is served)
UNHASHED_SECTIONS = ("paths", "serve", "orchestration")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE_DIR = PROJECT_ROOT / "service"


# ---- hashes ----------------------------------------------------------------------------------------------


def params_hash(params: Params) -> str:
    """sha256 of the params that change what is trained (paths and serving settings excluded)."""
    data = {k: v for k, v in params.to_dict().items() if k not in UNHASHED_SECTIONS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def data_hash(params: Params) -> str:
    """sha256 over the split tables and the items table the models were trained on."""
    digest = hashlib.sha256()
    files = [Path(params.paths.split_dir) / f"{part}.parquet" for part in ("train", "val", "test")]
    files.append(Path(params.paths.canonical_dir) / "items.parquet")
    for path in files:
        if not path.exists():
            raise RecforgeError(f"{path}: not found; run the pipeline (`recforge run`) before packaging")
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def model_version(params: Params) -> str:
    """The model-store version: derived from the data and the params, so it pins exactly what was trained."""
    return f"d{data_hash(params)[:12]}-p{params_hash(params)[:12]}"


def package_checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file of a package but its manifest (models' meta.json included)."""
    return checksums(directory, skip="manifest.json")


# ---- writing a package -----------------------------------------------------------------------------------


def _trained_models(params: Params) -> list[str]:
    names = [
        name for name in params.recommenders if (Path(params.paths.models_dir) / name / "full" / "meta.json").exists()
    ]
    missing = [name for name in params.recommenders if name not in names]
    if missing:
        raise RecforgeError(f"models not trained: {', '.join(missing)}; run `recforge stage train`")
    return names


def _copy_artifacts(params: Params, models: list[str], dest: Path) -> list[str]:
    """Models (checked), the re-ranker, embeddings, encoder states and profiles; returns the encoders."""
    for name in models:
        source = Path(params.paths.models_dir) / name / "full"
        read_meta(source)
        shutil.copytree(source, dest / "models" / name)
    rerank_dir = Path(params.paths.models_dir) / "rerank"
    if params.rerank.enabled and rerank_dir.exists():
        shutil.copytree(rerank_dir, dest / "rerank")
    embeddings = Path(params.paths.embeddings_dir)
    encoders = []
    if embeddings.exists():
        for path in sorted(embeddings.glob("*.npy")):
            (dest / "embeddings").mkdir(exist_ok=True)
            shutil.copy2(path, dest / "embeddings" / path.name)
            encoders.append(path.stem)
        if (embeddings / "encoders").exists():
            shutil.copytree(embeddings / "encoders", dest / "embeddings" / "encoders")
    profiles = Path(params.paths.profiles_dir) / "full"
    if profiles.exists():
        shutil.copytree(profiles, dest / "profiles")
    return encoders


def build_package(params: Params, dest: str | Path) -> dict[str, Any]:
    """Copy the trained pipeline into ``dest`` (an empty or new directory); returns the manifest."""
    from recforge.workspace import Workspace

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    workspace = Workspace(params)
    models = _trained_models(params)
    metrics_path = Path(params.paths.metrics_file)
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    encoders = _copy_artifacts(params, models, dest)

    workspace.items.to_parquet(dest / "items.parquet", index=False)
    pd.DataFrame({"user_id": workspace.maps.user_ids}).to_parquet(dest / "users.parquet", index=False)
    events = workspace.events("train+val")
    bounds = events.bounds
    history = {
        "indptr": bounds.astype(np.int64),
        "items": events.item_ids.astype(np.int32),
        "timestamps": events.timestamps.astype(np.int64),
    }
    if events.ratings is not None:
        history["ratings"] = events.ratings.astype(np.float32)
    np.savez(dest / "history.npz", **history)  # time order per user: what the re-ranker's features read

    clean = params.to_dict()
    clean["serve"]["api_token"] = None  # never bake a secret into an artifact
    (dest / "params.json").write_text(json.dumps(clean, indent=2))
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2))

    counts = {"users": int(events.n_users), "items": int(events.n_items), "interactions": int(len(events))}
    busiest = int(np.argmax(np.diff(bounds))) if events.n_users else 0
    manifest = {
        "format": PACKAGE_FORMAT,
        "name": MODEL_NAME,
        "version": model_version(params),
        "data_hash": data_hash(params),
        "params_hash": params_hash(params),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": {name: read_json(dest / "models" / name / "meta.json")["plugin"] for name in models},
        "encoders": encoders,
        "rerank": (dest / "rerank").exists(),
        "counts": counts,
        "example_user_id": plain(workspace.maps.user_ids[busiest]) if events.n_users else None,
        "checksums": package_checksums(dest),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


# ---- reading a package -----------------------------------------------------------------------------------


@dataclass
class Package:
    """A package directory, opened: manifest and params read, every file checked against the manifest."""

    directory: Path
    manifest: dict[str, Any]
    params: Params
    verify: bool = True

    @classmethod
    def open(cls, directory: str | Path, *, verify: bool = True) -> Package:
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.exists():
            raise RecforgeError(f"{directory}: not a recforge package (no manifest.json); run `recforge package`")
        manifest = read_json(manifest_path)
        if manifest.get("format") != PACKAGE_FORMAT:
            raise RecforgeError(f"{directory}: package format {manifest.get('format')} is not {PACKAGE_FORMAT}")
        if verify:
            verify_checksums(directory, manifest["checksums"])
        params = Params.model_validate(read_json(directory / "params.json"))
        return cls(directory=directory, manifest=manifest, params=params, verify=verify)

    @cached_property
    def items(self) -> pd.DataFrame:
        return pd.read_parquet(self.directory / "items.parquet")

    @cached_property
    def maps(self) -> IdMaps:
        users = pd.read_parquet(self.directory / "users.parquet")["user_id"]
        return IdMaps(
            user_ids=pd.Index(users.to_numpy(), name="user_id"),
            item_ids=pd.Index(self.items["item_id"].to_numpy(), name="item_id"),
        )

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return read_json(self.directory / "metrics.json")

    @property
    def encoders(self) -> list[str]:
        """Encoders with packaged item embeddings (in name order)."""
        return list(self.manifest.get("encoders", []))

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, items): each user's train+val items in time order."""
        with np.load(self.directory / "history.npz", allow_pickle=False) as data:
            return data["indptr"], data["items"]

    def events(self) -> Interactions:
        """The train+val history as Interactions (with timestamps and ratings: what the re-ranker's features read)."""
        with np.load(self.directory / "history.npz", allow_pickle=False) as data:
            indptr, item_ids = data["indptr"], data["items"]
            timestamps = data["timestamps"] if "timestamps" in data else np.zeros(len(item_ids), np.int64)
            ratings = data.get("ratings")
        return Interactions(
            user_ids=np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr)),
            item_ids=item_ids,
            timestamps=timestamps,
            ratings=ratings,
            n_users=len(indptr) - 1,
            n_items=len(self.items),
        )

    def embeddings(self, name: str) -> np.ndarray:
        path = self.directory / "embeddings" / f"{name}.npy"
        if not path.exists():
            raise RecforgeError(f"{path}: no embeddings for encoder '{name}' in the package")
        return np.load(path, allow_pickle=False)

    def load_models(self, context: Any) -> dict[str, Any]:
        """Every packaged recommender, loaded once through the plugin registry."""
        from recforge import registry

        return {
            name: load_model_dir(self.directory / "models" / name, registry.recommenders, context, verify=self.verify)[
                0
            ]
            for name in self.manifest["models"]
        }

    def load_encoder(self, name: str) -> Any:
        """Encoder ``name`` as the encode stage fitted it (its saved state), or None when it cannot be loaded."""
        from recforge import registry

        state = self.directory / "embeddings" / "encoders" / name
        try:
            return registry.encoders.get(name).load(state)
        except Exception as exc:
            log.warning("text encoder %s unavailable (%s); /recommend/text falls back to popular", name, exc)
            return None


# ---- model store, Bento, serve command -------------------------------------------------------------------


def serve_args(params: Params, **where: str | None) -> ServeArgs:
    """The service's arguments from ``serve:`` in params; ``where`` is ``model_tag=`` or ``package_dir=``."""
    serve = params.serve
    return ServeArgs(
        device=serve.device,
        model=serve.model,
        workers=serve.workers,
        threads=serve.threads,
        access_log=serve.access_log,
        allowed_hosts=",".join(_allowed_hosts(serve)),
        max_body_bytes=serve.max_body_bytes,
        max_concurrency=serve.max_concurrency,
        max_explained=serve.max_explained,
        explain_budget_s=serve.explain_budget_s,
        **where,
    )


def _allowed_hosts(serve: Any) -> list[str]:
    """``serve.allowed_hosts`` plus the bind host when it is a name or address clients can use."""
    hosts = list(serve.allowed_hosts)
    if serve.host not in ("0.0.0.0", "::", "") and not is_loopback(serve.host) and serve.host not in hosts:
        hosts.append(serve.host)
    return hosts


def _bentoml_cli() -> str:
    path = Path(sys.executable).with_name("bentoml")
    return str(path) if path.exists() else "bentoml"


def store_package(params: Params) -> tuple[str, dict[str, Any]]:
    """Build the package into the BentoML model store (reused when its files are the same); (tag, manifest)."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = f"{MODEL_NAME}:{model_version(params)}"
    existing = None
    with contextlib.suppress(NotFound):
        existing = bentoml.models.get(tag)
    with tempfile.TemporaryDirectory(prefix="recforge-package-") as staging:
        manifest = build_package(params, staging)
        if existing is not None:
            path = Path(existing.path) / "manifest.json"
            old = json.loads(path.read_text()) if path.exists() else {}
            # params.json/manifest differ only in timestamps we do not record; compare every recorded file
            if old.get("checksums", {}) == manifest["checksums"]:
                log.info("model %s already in the store with the same files", tag)
            else:
                log.info("model %s: files changed (nondeterministic retrain); replacing it", tag)
                bentoml.models.delete(tag)
                existing = None
        if existing is None:
            with bentoml.models.create(
                tag,
                labels={"project": "recforge", "model": ",".join(manifest["models"])},
                metadata={k: manifest[k] for k in ("data_hash", "params_hash", "counts", "models", "encoders")},
            ) as stored:
                shutil.copytree(staging, stored.path, dirs_exist_ok=True)
                if package_checksums(Path(stored.path)).keys() < manifest["checksums"].keys():
                    raise RecforgeError("package copy is incomplete")
    log.info("saved %s to the BentoML model store", tag)
    return tag, manifest


def build_bento(args: ServeArgs, service_dir: Path = SERVICE_DIR) -> str:
    """``bentoml build`` of a staging copy of ``service_dir`` with ``args`` (the exact model tag among
    them: the Bento keeps its build arguments); returns the Bento tag."""
    if not args.model_tag:
        raise RecforgeError("a Bento serves an exact model tag; none given")
    config = yaml.safe_load((service_dir / "bentofile.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="recforge-bento-") as ctx_name:
        ctx = Path(ctx_name)
        shutil.copy2(service_dir / "service.py", ctx / "service.py")
        python = dict(config.get("python") or {})
        python["lock_packages"] = False
        wheel = _build_wheel(ctx / "wheels")
        if wheel is not None:
            python["wheels"] = [f"wheels/{wheel.name}"]
            config.setdefault("include", []).append(f"wheels/{wheel.name}")
        python.setdefault("packages", ["recforge[torch,text,models,rerank,serve]"])
        config["python"] = python
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
        command = [_bentoml_cli(), "build", str(ctx), "-o", "tag", *args.cli()]
        done = subprocess.run(command, cwd=ctx, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RecforgeError(f"bentoml build failed:\n{done.stderr[-3000:] or done.stdout[-3000:]}")
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    bento_tag = lines[-1].removeprefix("__tag__:") if lines else ""
    log.info("built Bento %s (model %s)", bento_tag, args.model_tag)
    return bento_tag


def _build_wheel(dest: Path) -> Path | None:
    """A wheel of this checkout so the Bento can be containerised; None when it cannot be built offline."""
    if not (PROJECT_ROOT / "pyproject.toml").exists():
        return None
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recforge-wheel-") as build_dir:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(dest),
                str(PROJECT_ROOT),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TMPDIR": build_dir},
        )
    wheels = sorted(dest.glob("recforge-*.whl"))
    if done.returncode != 0 or not wheels:
        log.warning(
            "could not build a recforge wheel for the Bento (%s); it serves from this environment only",
            done.stderr[-300:],
        )
        return None
    return wheels[-1]


def serve_command(params: Params, *, port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment for the last package (reports/package.json).

    The Bento is served when it was built with the arguments params ask for now
    (BentoML serves a Bento with the arguments it was built with); otherwise
    ``service/`` is served from source with them, pinned to the same model tag.
    """
    record = Path(params.paths.reports_dir) / "package.json"
    if not record.exists():
        raise RecforgeError(f"{record}: nothing packaged yet; run `recforge package`")
    packaged = json.loads(record.read_text())
    args = serve_args(params, model_tag=packaged["model_tag"])
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(params.serve.threads))
    if params.serve.api_token and not env.get("RECFORGE_API_TOKEN"):
        env["RECFORGE_API_TOKEN"] = params.serve.api_token
    if not env.get("RECFORGE_API_TOKEN") and not is_loopback(params.serve.host):
        # open by default is not an option off loopback: a token made here, shown once, never stored
        env["RECFORGE_API_TOKEN"] = secrets.token_urlsafe(32)
        print(
            f"serve.host {params.serve.host} is not loopback and no token is set: every request but the health "
            f"checks needs\n  Authorization: Bearer {env['RECFORGE_API_TOKEN']}\n(shown once; set "
            "RECFORGE_API_TOKEN or serve.api_token to choose it)",
            file=sys.stderr,
            flush=True,
        )
    command = [_bentoml_cli(), "serve"]
    bento = packaged.get("bento_tag")
    if bento and packaged.get("serve_args") == args.model_dump():
        command.append(bento)
    else:
        if bento:
            log.warning(
                "serve settings differ from those Bento %s was built with; serving service/ with the new ones "
                "(`recforge package` rebuilds the Bento)",
                bento,
            )
        command += ["service:Recforge", "--working-dir", str(SERVICE_DIR), *args.cli()]
    command += ["--host", params.serve.host, "--port", str(port or params.serve.port)]
    return command, env
