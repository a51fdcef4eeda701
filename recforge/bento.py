"""The BentoML side of a package: the model store entry, the Bento, the service's arguments and the serve command.

A package (``recforge.packaging``) is a checked directory; this module puts it
into BentoML's model store under a content-derived tag, builds a Bento pinned
to that tag, and says how to serve it (``recforge serve``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from recforge.errors import RecforgeError
from recforge.packaging import PROJECT_ROOT, SERVICE_DIR, Package, build_package
from recforge.params import Params
from recforge.schemas import ServeArgs, is_loopback

log = logging.getLogger(__name__)


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
        feedback_url=feedback_url(params),
        feedback_staleness_s=params.feedback.staleness_s,
        feedback_foldin=params.feedback.foldin,
        **_follow(params),
        **where,
    )


def _follow(params: Params) -> dict[str, Any]:
    """``serve.follow: production``: the registry the workers poll (absolute) and how often."""
    if params.serve.follow != "production":
        return {}
    from recforge.production import registry_path

    return {"follow_registry": str(registry_path(params).resolve()), "poll_s": params.serve.poll_s}


def feedback_url(params: Params) -> str | None:
    """The store the service opens: ``feedback.url`` with a relative SQLite path made absolute against the
    workspace (the server runs elsewhere); None when ``feedback.enabled`` is false."""
    if not params.feedback.enabled:
        return None
    from recforge.feedback import sqlite_path

    path = sqlite_path(params.feedback.url, Path.cwd())
    return params.feedback.url if path is None else str(path.resolve())


def _allowed_hosts(serve: Any) -> list[str]:
    """``serve.allowed_hosts`` plus the bind host when it is a name or address clients can use."""
    hosts = list(serve.allowed_hosts)
    # a comparison with the wildcard addresses (they are not names clients use), not a bind
    if serve.host not in ("0.0.0.0", "::", "") and not is_loopback(serve.host) and serve.host not in hosts:  # nosec B104
        hosts.append(serve.host)
    return hosts


def _bentoml_cli() -> str:
    path = Path(sys.executable).with_name("bentoml")
    return str(path) if path.exists() else "bentoml"


def store_package(params: Params) -> tuple[str, dict[str, Any]]:
    """Build the package into the BentoML model store; (tag, manifest).

    The tag derives from the package's content hash: the same files reuse the
    entry, other files (a retrain, a serve-only change in params.json) get a new
    tag. An entry is never rewritten: one whose files are not those its tag
    names is an error, so a Bento built earlier keeps serving what it was built with.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    with tempfile.TemporaryDirectory(prefix="recforge-package-") as staging:
        manifest = build_package(params, staging)
        tag = manifest["tag"]
        existing = None
        with contextlib.suppress(NotFound):
            existing = bentoml.models.get(tag)
        if existing is not None:
            try:
                stored = Package.open(existing.path)
                same = stored.manifest["checksums"] == manifest["checksums"]
                why = "other files"
            except RecforgeError as exc:
                same, why = False, str(exc)
            if not same:
                raise RecforgeError(
                    f"model store entry {tag} does not hold the files its tag names ({why}); it is never "
                    f"rewritten: inspect it, remove it (`bentoml models delete {tag}`) and package again"
                )
            log.info("model %s already in the store with the same files", tag)
        else:
            with bentoml.models.create(
                tag,
                labels={"project": "recforge", "model": ",".join(manifest["models"])},
                metadata={
                    k: manifest[k] for k in ("data_hash", "params_hash", "content_hash", "counts", "models", "encoders")
                },
            ) as entry:
                shutil.copytree(staging, entry.path, dirs_exist_ok=True)
            Package.open(bentoml.models.get(tag).path)  # the entry holds exactly the package's files
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
    packaged = json.loads(record.read_text()) if record.exists() else {}
    tag = packaged.get("model_tag")
    if params.serve.follow == "production":  # start on production when there is one (the workers then follow it)
        from recforge.production import current

        now = current(params)
        if now is not None and now.tag != tag:
            tag, packaged = now.tag, {}
    if tag is None:
        raise RecforgeError(f"{record}: nothing packaged yet; run `recforge package`")
    args = serve_args(params, model_tag=tag)
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
