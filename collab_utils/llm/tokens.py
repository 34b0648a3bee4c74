"""One token counter for every system and role.

The token cost of MR and the tokens of Table 1 must mean the same for a model served by vLLM and
for a trained adapter run locally, so every count goes through one tokenizer named in params
(`generation.tokenizer`, default: the assistant model's own), loaded locally even when
generation is remote. A server's reported `usage` is only a check.
"""

from __future__ import annotations

from functools import cache

from .. import models


class TokenCounter:
    """Counts tokens of texts with one local tokenizer; `name` says which (recorded in tables)."""

    def __init__(self, name: str):
        from transformers import AutoTokenizer

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(models.resolve(name))

    def __call__(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False).input_ids]


@cache
def token_counter(name: str) -> TokenCounter:
    """The counter of `name` (a model id, local folder or "embedded"), loaded once."""
    return TokenCounter(name)
