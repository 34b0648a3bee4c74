"""LoRA adapters on the inference server (vLLM's LoRA support), with `hf` as the fallback.

vLLM serves adapters given at start (`--enable-lora --lora-modules NAME=PATH`, listed in
`/v1/models` with `root` = PATH and `parent` = the base model) and, with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, loads more at run time: `POST /v1/load_lora_adapter`
`{"lora_name": NAME, "lora_path": PATH}` (200 "Success: ...", 400 "... has already been loaded").
A request names the adapter in its `model` field. The path must be readable by the server.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from .. import models
from ..config import ModelSpec
from . import replies
from .base import Backend, BackendError
from .servers import LoRANotServed


async def serve_adapter(backend, client, server, cards) -> dict:
    """Make `server` serve the adapter; its identity (local weights hash, or the card)."""
    cards = cards or []
    name = backend.served_model
    if not backend.spec.adapter:  # a name only: the server must list it
        card = next((c for c in cards if c.get("id") == name), None)
        if card is None:
            raise LoRANotServed(
                f"{server.url} does not list the adapter {name!r} in /v1/models (vLLM: "
                f"--enable-lora --lora-modules {name}=PATH)"
            )
        return replies.card_identity(cards, name)
    path = str(Path(backend.spec.adapter).resolve())
    weights = {"weights": folder_hash(backend.spec.adapter)}  # however the server got it
    if not backend.spec.adapter_name:  # preloaded with --lora-modules NAME=PATH?
        for card in cards:
            if card.get("root") in (path, backend.spec.adapter) and card.get("parent"):
                backend._shared.served[server.index] = card["id"]
                return weights
    if any(c.get("id") == name for c in cards):
        return weights
    status, _, data = await backend._exchange(
        client, server, "POST", "/load_lora_adapter", {"lora_name": name, "lora_path": path},
        64 << 10,
    )  # fmt: skip
    if status == 200 or (status == 400 and b"already been loaded" in data):
        return weights
    if status in (401, 403):
        raise BackendError(f"{server.url}/load_lora_adapter: HTTP {status}")
    hint = ""
    if status in (404, 405):
        hint = (
            " (vLLM loads adapters at run time with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or serve it with --lora-modules "
            f"NAME={path} and set adapter_name)"
        )
    raise LoRANotServed(
        f"{server.url}/load_lora_adapter: HTTP {status}: {backend._snippet(data)}{hint}"
    )


def folder_hash(folder) -> str:
    return models.fingerprint(str(folder)).split("@")[-1][:16]


def adapter_backend(spec: ModelSpec, adapter, cache) -> Backend:
    """The policy `spec` with the trained LoRA `adapter` (a folder). On an `openai` base the
    inference server serves it (vLLM's LoRA support); when no server can, or the base is local,
    the `hf` backend loads base and adapter. The cache key holds the adapter's hash either way."""
    from . import load_backend

    adapter = str(adapter)
    if spec.backend == "openai":
        backend = load_backend(dataclasses.replace(spec, adapter=adapter, adapter_name=None), cache)
        try:
            backend.prepare()
            return backend
        except LoRANotServed as exc:
            warnings.warn(f"the adapter runs locally (hf), not on the server: {exc}", stacklevel=2)
    local = dataclasses.replace(
        spec, backend="hf", base_url=None, adapter=adapter, adapter_name=None
    )
    return load_backend(local, cache)
