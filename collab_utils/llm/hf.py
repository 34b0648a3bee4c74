"""The `hf` backend: transformers on CPU or GPU, per-row seeded sampling, LoRA through peft."""

from __future__ import annotations

from tqdm.auto import tqdm

from .. import models
from ..cache import Entry, GenerationCache
from ..config import ModelSpec
from ..train_memory import cpu_threads
from . import batching
from .base import Backend, BackendError


def pick_dtype(requested: str):
    """`auto`: bf16 on CUDA, float32 on a CPU.

    On a CPU, bf16 kernels round differently with the batch's shape, so a row's text would
    depend on its batch mates and a resumed run could differ from an uninterrupted one; float32
    keeps every generation a function of its own request. `dtype: bfloat16` trades that for
    speed where the CPU has native bf16 (AVX512-BF16 / AMX): about 1.3x here.
    """
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


class SeededSampler:
    """A logits processor that samples each row with its own torch.Generator.

    It returns scores that are -inf everywhere but at the sampled token, so `generate` runs
    greedy and keeps the sample. Temperature and top-p follow the usual definitions; top-p
    looks at the `shortlist` most likely tokens first and sorts the whole vocabulary only for
    a row whose shortlist holds less than `top_p` of the mass (same result, much faster).
    """

    shortlist = 1024

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        import torch

        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        vocab = logits.shape[-1]
        if self.top_p >= 1.0:
            probs, index = logits.softmax(-1), None
        else:
            probs, index = self._top(logits, min(self.shortlist, vocab))
            if bool((probs.sum(-1) < self.top_p).any()):
                probs, index = self._top(logits, vocab)
            probs = probs.masked_fill(probs.cumsum(-1) - probs > self.top_p, 0.0)
        picks = torch.stack(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)]
        )
        tokens = picks if index is None else index.gather(-1, picks)
        return torch.full_like(scores, float("-inf")).scatter(-1, tokens, 0.0)

    @staticmethod
    def _top(logits, k):
        """The k largest probabilities of each row, in descending order, and their token ids."""
        top, index = logits.topk(k, dim=-1)
        return (top - logits.logsumexp(-1, keepdim=True)).exp(), index


class HFBackend(Backend):
    """transformers on CPU or GPU; LoRA adapters through peft; 4-bit NF4 only on CUDA."""

    name = "hf"

    def __init__(self, spec: ModelSpec, cache: GenerationCache | None):
        super().__init__(spec, cache)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = models.resolve(spec.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.tokenizer.chat_template:
            raise BackendError(f"{spec.model}: the tokenizer has no chat template")
        kwargs = {"dtype": pick_dtype(spec.dtype)}
        if spec.load_in_4bit:
            if not torch.cuda.is_available():
                raise BackendError("load_in_4bit needs a CUDA GPU (bitsandbytes NF4)")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
            kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if torch.cuda.is_available() and not spec.load_in_4bit:
            model = model.to("cuda")
        if spec.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        # Numerics change the samples: the weights' dtype and quantization are part of the key.
        precision = "nf4" if spec.load_in_4bit else str(kwargs["dtype"]).removeprefix("torch.")
        self.fingerprint += f":{precision}"

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False).input_ids]

    def prompt_ids(self, conversations: list[list[dict]]) -> list[list[int]]:
        """Token ids of each conversation under the chat template, ready for a reply."""
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        return self.tokenizer(texts, add_special_tokens=False).input_ids

    def _generate_each(self, conversations, params, seeds, desc, store) -> None:
        # torch threads for the cores other processes leave free: beside a busy process, one
        # thread per core made a reward call 12x slower (284 s vs 24 s, online DPO on 2 cores)
        with cpu_threads(self.device.type):
            super()._generate_each(conversations, params, seeds, desc, store)

    def _rate_each(self, conversations, store) -> None:
        with cpu_threads(self.device.type):
            super()._rate_each(conversations, store)

    def _generate(self, conversations, params, seeds, desc):
        prompts = self.prompt_ids(conversations)
        batches = batching.plan(
            prompts,
            max_rows=self.spec.batch_size,
            max_tokens=self.spec.batch_tokens,
            new_tokens=params["max_new_tokens"],
            reuse_prefixes=self.spec.reuse_prefixes,
        )
        results: dict[int, Entry] = {}
        bar = tqdm(total=len(prompts), desc=desc, disable=desc is None, leave=False)
        for batch in batches:
            generated = self.generate_ids(
                [prompts[i] for i in batch.rows],
                params,
                [seeds[i] for i in batch.rows],
                prefix_lengths=batch.prefix_lengths,
            )
            for i, ids in zip(batch.rows, generated):
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                results[i] = Entry(text, len(prompts[i]), len(ids))
            bar.update(len(batch.rows))
        bar.close()
        return [results[i] for i in range(len(prompts))]

    def generate_ids(
        self,
        rows: list[list[int]],
        params: dict,
        seeds: list[int],
        prefix_lengths: list[int] | None = None,
    ) -> list[list[int]]:
        """One batched `generate` call; returns the new ids of each row up to its end.

        Rows are left-padded. With `prefix_lengths`, each distinct prefix `row[:p]` is run
        through the model once and its key/value cache copied to the rows that share it; the
        rows then continue from their suffixes (padded between prefix and suffix; positions
        follow the attention mask, so each row sees the same positions as without reuse).
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        pad = self.tokenizer.pad_token_id
        cache, input_ids, mask = self._padded_inputs(rows, prefix_lengths)
        width = len(input_ids[0])
        processors = LogitsProcessorList()
        if params["temperature"] > 0:
            processors.append(
                SeededSampler(seeds, params["temperature"], params["top_p"], self.device)
            )
        config = GenerationConfig(
            max_new_tokens=params["max_new_tokens"],
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self._stop_ids(),
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor(input_ids, device=self.device),
                attention_mask=torch.tensor(mask, device=self.device),
                cache=cache,
                generation_config=config,
                logits_processor=processors,
            )
        stops = set(self._stop_ids())
        new_ids = []
        for row in out[:, width:].tolist():
            end = next((j for j, t in enumerate(row) if t in stops), len(row))
            new_ids.append(row[:end])
        return new_ids

    def _padded_inputs(self, rows: list[list[int]], prefix_lengths: list[int] | None):
        """(cache, ids, mask) of left-padded rows: no cache, or the shared prefixes' cache."""
        pad = self.tokenizer.pad_token_id
        if prefix_lengths is None:
            return None, *_left_padded(rows, pad)
        return self._shared_prefix_inputs(rows, prefix_lengths, pad)

    def _prefix_cache(self, prefixes: list[list[int]], pad: int):
        """The key/value cache of left-padded prefixes, one forward pass, no logits kept."""
        import torch
        from transformers import DynamicCache

        ids, mask = _left_padded(prefixes, pad)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(**self._inputs(ids, mask), cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    def _last_logits(self, rows: list[list[int]], prefix_lengths: list[int] | None):
        """Next-token logits after each row, one batch; shared prefixes computed once."""
        import torch

        cache, ids, mask = self._padded_inputs(rows, prefix_lengths)
        inputs = self._inputs(ids, mask)
        if cache is not None:  # feed only the suffixes; the mask still spans the prefixes
            done = cache.get_seq_length()
            inputs["input_ids"] = inputs["input_ids"][:, done:]
            inputs["position_ids"] = inputs["position_ids"][:, done:]
        with torch.inference_mode():
            return self.model(**inputs, cache=cache, logits_to_keep=1).logits[:, -1, :]

    def _shared_prefix_inputs(self, rows, prefix_lengths, pad):
        """The prefixes' cache, one row per row, and each row as [padded prefix][padded suffix]."""
        import torch

        prefixes = [tuple(r[:p]) for r, p in zip(rows, prefix_lengths)]
        index = {p: k for k, p in enumerate(dict.fromkeys(prefixes))}  # first-seen order
        cache = self._prefix_cache([list(p) for p in index], pad)
        cache.batch_select_indices(torch.tensor([index[p] for p in prefixes], device=self.device))
        head_ids, head_mask = _left_padded([list(p) for p in prefixes], pad)
        tail_ids, tail_mask = _left_padded([r[p:] for r, p in zip(rows, prefix_lengths)], pad)
        ids = [h + t for h, t in zip(head_ids, tail_ids)]
        return cache, ids, [h + t for h, t in zip(head_mask, tail_mask)]

    def _inputs(self, ids: list[list[int]], mask: list[list[int]]) -> dict:
        """Tensors for a forward pass; positions follow the mask (padding anywhere)."""
        import torch

        mask = torch.tensor(mask, device=self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        ids = torch.tensor(ids, device=self.device)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}

    def _digit_probabilities(self, conversations):
        """p(next token = d) for d = 0..9 after the reply prefix "Score: ", in batches."""

        digits = [self.tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
        if any(len(ids) != 1 for ids in digits):
            raise BackendError(f"{self.spec.model}: digits are not single tokens; cannot rate")
        digit_ids = [ids[0] for ids in digits]
        prefix = self.tokenizer("Score: ", add_special_tokens=False).input_ids
        rows = [ids + prefix for ids in self.prompt_ids(conversations)]
        out: dict[int, list[float]] = {}
        limits = {"max_rows": self.spec.batch_size, "max_tokens": self.spec.batch_tokens}
        reuse = self.spec.reuse_prefixes
        for batch in batching.plan(rows, **limits, new_tokens=0, reuse_prefixes=reuse):
            logits = self._last_logits([rows[i] for i in batch.rows], batch.prefix_lengths)
            probs = logits.float().softmax(-1)[:, digit_ids].tolist()
            out.update(zip(batch.rows, probs))
        return [out[i] for i in range(len(rows))]

    def _stop_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


def _left_padded(rows: list[list[int]], pad: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rows padded on the left to one width, and their attention masks."""
    width = max(len(r) for r in rows)
    ids = [[pad] * (width - len(r)) + r for r in rows]
    return ids, [[0] * (width - len(r)) + [1] * len(r) for r in rows]
