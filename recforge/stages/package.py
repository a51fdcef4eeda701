"""package: the trained pipeline -> BentoML model store -> a Bento.

1. :func:`recforge.serving.build_package` copies the served artifacts (every
   model's ``full`` part, embeddings and encoder states, profiles, id maps,
   items, histories, params without secrets, metrics) into a new model-store
   entry ``recforge-model:<data hash>-<params hash>``; its manifest records the
   sha256 of every file, checked again when the service loads it.
2. ``bentoml build`` runs on a staging copy of ``service/`` whose
   ``recforge_model.json`` names that exact tag, so the Bento bundles and
   serves exactly this model (never ``:latest``).

``BENTOML_HOME`` chooses the store (default ``~/bentoml``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from recforge.errors import RecforgeError
from recforge.params import Params

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVICE_DIR = PROJECT_ROOT / "service"
TAG_FILE = "recforge_model.json"


def run_package(params: Params, *, build: bool | None = None) -> dict[str, Any]:
    """Save the trained pipeline to the model store and (with ``serve.build``) build the Bento.

    Returns ``{"model_tag": ..., "bento_tag": ... | None, "manifest": ...}`` and
    writes the same to ``<reports_dir>/package.json``.
    """
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    import bentoml
    from bentoml.exceptions import NotFound

    from recforge.artifacts import write_json
    from recforge.serving import MODEL_NAME, build_package, model_version, package_checksums

    tag = f"{MODEL_NAME}:{model_version(params)}"
    existing = None
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="recforge-package-") as staging:
        manifest = build_package(params, staging)
        if existing is not None:
            old = json.loads((Path(existing.path) / "manifest.json").read_text()) if (Path(existing.path) / "manifest.json").exists() else {}
            if _same_files(old.get("checksums", {}), manifest["checksums"]):
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

    bento_tag = None
    if params.serve.build if build is None else build:
        bento_tag = build_bento(tag)
    result = {"model_tag": tag, "bento_tag": bento_tag, "models": manifest["models"], "data_hash": manifest["data_hash"]}
    write_json(result, Path(params.paths.reports_dir) / "package.json")
    return result


def _same_files(old: dict[str, str], new: dict[str, str]) -> bool:
    # params.json/manifest differ only in timestamps we do not record; compare every recorded file
    return old == new


def build_bento(model_tag: str, service_dir: Path = SERVICE_DIR) -> str:
    """``bentoml build`` on a staging copy of ``service_dir`` pinned to ``model_tag``; returns the Bento tag."""
    config = yaml.safe_load((service_dir / "bentofile.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="recforge-bento-") as ctx_name:
        ctx = Path(ctx_name)
        shutil.copy2(service_dir / "service.py", ctx / "service.py")
        (ctx / TAG_FILE).write_text(json.dumps({"tag": model_tag}))
        python = dict(config.get("python") or {})
        python["lock_packages"] = False
        wheel = _build_wheel(ctx / "wheels")
        if wheel is not None:
            python["wheels"] = [f"wheels/{wheel.name}"]
            config.setdefault("include", []).append(f"wheels/{wheel.name}")
        python.setdefault("packages", ["recforge[torch,text,models,rerank,serve]"])
        config["python"] = python
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, "RECFORGE_MODEL_TAG": model_tag, "BENTOML_DO_NOT_TRACK": "True"}
        env.pop("RECFORGE_PACKAGE_DIR", None)
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        command = [str(bentoml_cli) if bentoml_cli.exists() else "bentoml", "build", str(ctx), "-o", "tag"]
        done = subprocess.run(command, cwd=ctx, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RecforgeError(f"bentoml build failed:\n{done.stderr[-3000:] or done.stdout[-3000:]}")
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    bento_tag = lines[-1].removeprefix("__tag__:") if lines else ""
    log.info("built Bento %s (model %s)", bento_tag, model_tag)
    return bento_tag


def _build_wheel(dest: Path) -> Path | None:
    """A wheel of this checkout so the Bento can be containerised; None when it cannot be built offline."""
    if not (PROJECT_ROOT / "pyproject.toml").exists():
        return None
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recforge-wheel-") as build_dir:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(PROJECT_ROOT)],
            capture_output=True,
            text=True,
            env={**os.environ, "TMPDIR": build_dir},
        )
    wheels = sorted(dest.glob("recforge-*.whl"))
    if done.returncode != 0 or not wheels:
        log.warning("could not build a recforge wheel for the Bento (%s); it serves from this environment only", done.stderr[-300:])
        return None
    return wheels[-1]


def serve_command(params: Params, *, port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment for the last package (reports/package.json)."""
    record = Path(params.paths.reports_dir) / "package.json"
    if not record.exists():
        raise RecforgeError(f"{record}: nothing packaged yet; run `recforge package`")
    packaged = json.loads(record.read_text())
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "RECFORGE_DEVICE": params.serve.device,
           "RECFORGE_WORKERS": str(params.serve.workers), "RECFORGE_THREADS": str(params.serve.threads)}
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(params.serve.threads))
    if params.serve.api_token and not env.get("RECFORGE_API_TOKEN"):
        env["RECFORGE_API_TOKEN"] = params.serve.api_token
    if params.serve.model:
        env["RECFORGE_MODEL"] = params.serve.model
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml_cli) if bentoml_cli.exists() else "bentoml", "serve"]
    if packaged.get("bento_tag"):
        command.append(packaged["bento_tag"])
    else:
        env["RECFORGE_MODEL_TAG"] = packaged["model_tag"]
        command += ["service:Recforge", "--working-dir", str(SERVICE_DIR)]
    command += ["--host", params.serve.host, "--port", str(port or params.serve.port)]
    return command, env
