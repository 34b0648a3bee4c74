"""Run parameters: YAML files validated into dataclasses.

    params = config.load("params/quickstart.yaml", ["reward.lam=1e-4"])

An unknown key, a wrong type or an impossible value raises `ParamsError` naming the key and
the file. The notebooks take two papermill parameters, `params_file` and `overrides`, and call
`load` with them, so a notebook, the CLI and a sweep all read parameters the same way.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .params_yaml import (
    KeyProblem,
    ParamsError,
    build,
    derived_run_name,
    describe,
    override_items,
    parse_value,
    read_yaml,
    require,
    set_dotted,
)
from .run_folder import RunFolder

__all__ = ["ParamsError", "Params", "Sampling", "describe", "load", "parse_value", "read_yaml"]


BACKENDS = ("hf", "openai", "agenda")
DOC_METRICS = ("paper_bleu", "word_bleu")  # metrics.DOC_METRICS
TOKEN_TURNS = ("window", "assistant")
TRAIN_METHODS = ("dpo", "sft", "online_dpo", "grpo")
ONLINE_METHODS = ("online_dpo", "grpo")  # sample from the policy, score by MR while training
TRAIN_INITS = ("base", "sft")
# The paper's token price λ per task kind (its runs: documents 1e-4, code and math 5e-4).
LAM_PRESETS = {"doc": 1e-4, "code": 5e-4, "math": 5e-4, "qa": 5e-4}


@dataclass
class ModelSpec:
    """One role's model. `backend: agenda` is the rule-based user simulator (user role only)."""

    backend: str = "hf"
    model: str = "embedded"
    adapter: str | None = None
    dtype: str = "auto"
    batch_size: int = 64  # hf: most rows in one generate call
    batch_tokens: int = 32768  # hf: key/value budget, rows x (longest prompt + new tokens)
    reuse_prefixes: bool = True  # hf: shared prompt prefixes computed once per batch
    load_in_4bit: bool = False
    base_url: str | list[str] | None = None  # openai: one server or a list (least-loaded)
    adapter_name: str | None = None  # openai: a LoRA the server serves under this name
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8  # openai: requests in flight per server
    max_retries: int = 4
    timeout_s: float = 120.0  # openai: one deadline per request (connect to last byte)

    def check(self, key: str) -> None:
        require(self.backend in BACKENDS, f"{key}.backend", f"must be one of {BACKENDS}")
        require(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            f"{key}.dtype",
            "must be auto, float32, bfloat16 or float16",
        )
        require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        require(self.batch_tokens >= 1, f"{key}.batch_tokens", "must be >= 1")
        require(self.concurrency >= 1, f"{key}.concurrency", "must be >= 1")
        require(self.max_retries >= 0, f"{key}.max_retries", "must be >= 0")
        require(0 < self.timeout_s <= 86400, f"{key}.timeout_s", "must be in (0, 86400]")
        if self.backend == "openai":
            require(bool(self.base_url), f"{key}.base_url", "is required for backend openai")
            urls = [self.base_url] if isinstance(self.base_url, str) else self.base_url
            for i, url in enumerate(urls):
                where = f"{key}.base_url" + ("" if isinstance(self.base_url, str) else f"[{i}]")
                require(
                    isinstance(url, str) and bool(re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", url)),
                    where,
                    f"must be an http:// or https:// URL, got {url!r}",
                )
                require(urls.index(url) == i, where, f"lists {url} twice")
        require(
            self.adapter_name is None or self.backend == "openai",
            f"{key}.adapter_name",
            "names a LoRA served by an inference server: needs backend openai",
        )


@dataclass
class Models:
    assistant: ModelSpec = field(default_factory=ModelSpec)
    user: ModelSpec = field(default_factory=ModelSpec)
    judge: ModelSpec = field(default_factory=ModelSpec)

    def check(self, key: str) -> None:
        for role in ("assistant", "judge"):
            require(
                getattr(self, role).backend != "agenda",
                f"{key}.{role}.backend",
                "agenda is a user simulator; use it for the user role only",
            )


@dataclass
class TaskParams:
    source: str = "builtin:code"
    format: str | None = None
    limit: int | None = None
    holdout_fraction: float = 0.25
    accept_bleu: float = 0.3  # the agenda user accepts a document at this BLEU to the reference
    doc_metric: str = "paper_bleu"  # document R_ext: the paper's character BLEU, or word_bleu
    allow_unisolated: bool = False  # run model code where the sandbox cannot isolate it

    def check(self, key: str) -> None:
        require(self.limit is None or self.limit >= 1, f"{key}.limit", "must be >= 1 or null")
        require(0 <= self.holdout_fraction < 1, f"{key}.holdout_fraction", "must be in [0, 1)")
        require(0 <= self.accept_bleu <= 1, f"{key}.accept_bleu", "must be in [0, 1]")
        require(
            self.doc_metric in DOC_METRICS, f"{key}.doc_metric", f"must be one of {DOC_METRICS}"
        )


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    user_max_new_tokens: int = 96
    judge_max_new_tokens: int = 48
    tokenizer: str | None = None  # counts every system's tokens; None: the assistant's model

    def check(self, key: str) -> None:
        for name in ("max_new_tokens", "user_max_new_tokens", "judge_max_new_tokens"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        require(0 <= self.temperature <= 10, f"{key}.temperature", "must be in [0, 10]")
        require(0 < self.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")


@dataclass(frozen=True)
class Sampling:
    """How a role samples: every `backend.chat` setting but the seed (`**sampling.kwargs`)."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0

    @property
    def kwargs(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RewardParams:
    """MR: S futures (`n_samples`) of `window` rounds for each of `n_candidates` responses."""

    n_candidates: int = 4
    n_samples: int = 3
    window: int = 2
    lam: float | None = None  # None: the paper's preset per task kind (LAM_PRESETS)
    mu: float = 1.0
    token_turns: str = "window"  # the paper counts the whole window; "assistant": its turns only
    proactive_fraction: float = 0.5
    fewshot_fraction: float = 0.0  # candidates shown simulate.FEWSHOT_MESSAGES first
    token_budget: int | None = None  # a future stops once its assistant tokens reach this

    def check(self, key: str) -> None:
        require(self.n_candidates >= 1, f"{key}.n_candidates", "must be >= 1")
        require(self.n_samples >= 1, f"{key}.n_samples", "must be >= 1")
        require(self.window >= 0, f"{key}.window", "must be >= 0")
        require(self.lam is None or self.lam >= 0, f"{key}.lam", "must be >= 0 or null")
        require(self.mu >= 0, f"{key}.mu", "must be >= 0")
        require(
            self.token_turns in TOKEN_TURNS, f"{key}.token_turns", f"must be one of {TOKEN_TURNS}"
        )
        require(0 <= self.proactive_fraction <= 1, f"{key}.proactive_fraction", "in [0, 1]")
        require(
            0 <= self.fewshot_fraction <= 1 - self.proactive_fraction,
            f"{key}.fewshot_fraction",
            "must be in [0, 1 - proactive_fraction]",
        )
        require(
            self.token_budget is None or self.token_budget >= 1,
            f"{key}.token_budget",
            "must be >= 1 or null",
        )


@dataclass
class JudgeParams:
    """What the judge sees and how it answers (the paper's code and doc judges see no goal)."""

    sees_goal: bool = False
    reasons: bool = False  # write a short reasoning, then "Score: N" (strong judges)

    def check(self, key: str) -> None:
        pass


@dataclass
class PairParams:
    """Multi-turn data generation and chosen/rejected pairs."""

    max_turns: int = 3
    min_gap: float = 0.05
    pairs_per_turn: int = 1
    path_lam: float | None = None  # λ that picks the conversation path; null: reward.lam

    def check(self, key: str) -> None:
        require(self.max_turns >= 1, f"{key}.max_turns", "must be >= 1")
        require(self.min_gap >= 0, f"{key}.min_gap", "must be >= 0")
        require(self.pairs_per_turn >= 1, f"{key}.pairs_per_turn", "must be >= 1")
        require(
            self.path_lam is None or self.path_lam >= 0, f"{key}.path_lam", "must be >= 0 or null"
        )


@dataclass
class TrainParams:
    """The training recipe with LoRA (paper defaults); 4-bit NF4 QLoRA when CUDA is present.

    method: dpo (offline DPO on pairs.jsonl), sft (on sft.jsonl, assistant turns only),
    online_dpo (rounds of: G samples of the current adapter per context, scored by MR, best vs
    worst, DPO) or grpo (TRL's GRPOTrainer, MR of each of G samples as the reward);
    init: base, or sft (method dpo only: SFT first, then DPO from the SFT adapter).
    group_size (G) and futures (S, null: reward.n_samples) apply to online_dpo and grpo,
    online_rounds to online_dpo.
    """

    method: str = "dpo"
    init: str = "base"
    sft_learning_rate: float | None = None  # the SFT step's lr; null: learning_rate
    lora_r: int = 32
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: str = "all-linear"
    beta: float = 0.1
    learning_rate: float = 5e-6
    epochs: float = 1.0
    batch_size: int = 2
    gradient_accumulation_steps: int = 4
    max_length: int = 1024
    gradient_checkpointing: bool = True
    quantize_4bit: str = "auto"
    report_to: str = "none"
    logging_steps: int = 1
    sft_weight: float = 0.0  # > 0: DPO + this weight × NLL of the chosen reply (TRL "sft" loss)
    group_size: int = 4  # G: responses sampled from the policy per context (online_dpo, grpo)
    futures: int | None = None  # S: simulated futures per sampled response; null: reward.n_samples
    online_rounds: int = 2  # online_dpo: sample -> score -> DPO rounds

    def check(self, key: str) -> None:
        require(
            self.method in TRAIN_METHODS,
            f"{key}.method",
            f"must be one of {', '.join(TRAIN_METHODS)} (got {self.method!r})",
        )
        require(
            self.group_size >= 2 or self.method not in ONLINE_METHODS,
            f"{key}.group_size",
            f"must be >= 2 for method {self.method} (got {self.group_size}): it compares the G "
            "responses sampled for one context (best vs worst, or each against the group mean)",
        )
        require(self.group_size >= 1, f"{key}.group_size", "must be >= 1")
        require(self.futures is None or self.futures >= 1, f"{key}.futures", "must be >= 1 or null")
        require(self.online_rounds >= 1, f"{key}.online_rounds", "must be >= 1")
        require(
            self.init in TRAIN_INITS,
            f"{key}.init",
            f"must be one of {', '.join(TRAIN_INITS)} (got {self.init!r})",
        )
        require(
            self.init == "base" or self.method == "dpo",
            f"{key}.init",
            f"{self.init} applies to method dpo only (DPO continues from the SFT adapter); "
            f"method {self.method} starts from the base",
        )
        require(
            self.sft_learning_rate is None or 0 < self.sft_learning_rate <= 1,
            f"{key}.sft_learning_rate",
            "must be in (0, 1] or null",
        )
        for name in ("lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        require(0 <= self.lora_dropout < 1, f"{key}.lora_dropout", "must be in [0, 1)")
        require(self.beta > 0, f"{key}.beta", "must be > 0")
        require(0 < self.learning_rate <= 1, f"{key}.learning_rate", "must be in (0, 1]")
        require(0 < self.epochs <= 1000, f"{key}.epochs", "must be in (0, 1000]")
        require(self.max_length >= 16, f"{key}.max_length", "must be >= 16")
        require(self.logging_steps >= 1, f"{key}.logging_steps", "must be >= 1")
        require(self.sft_weight >= 0, f"{key}.sft_weight", "must be >= 0")
        require(
            self.quantize_4bit in ("auto", "yes", "no"),
            f"{key}.quantize_4bit",
            "must be auto (4-bit when CUDA is present), yes or no",
        )


@dataclass
class EvalParams:
    """Fresh conversations on held-out tasks: base, proactive-prompted base, trained."""

    rounds: int = 3
    qa_source: str | None = "builtin:qa"
    qa_limit: int | None = 10

    def check(self, key: str) -> None:
        require(self.rounds >= 1, f"{key}.rounds", "must be >= 1")
        require(self.qa_limit is None or self.qa_limit >= 1, f"{key}.qa_limit", ">= 1 or null")


@dataclass
class Params:
    run_name: str = ""
    seed: int = 0
    output_dir: str = "outputs"
    cache_path: str = "outputs/.cache/generations.sqlite"
    models: Models = field(default_factory=Models)
    tasks: TaskParams = field(default_factory=TaskParams)
    generation: GenerationParams = field(default_factory=GenerationParams)
    reward: RewardParams = field(default_factory=RewardParams)
    judge: JudgeParams = field(default_factory=JudgeParams)
    pairs: PairParams = field(default_factory=PairParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)
    source_file: str = field(default="", metadata={"internal": True})
    overrides: list = field(default_factory=list, metadata={"internal": True})

    def check(self, key: str) -> None:
        require(
            bool(re.fullmatch(r"[A-Za-z0-9._-]+", self.run_name)),
            "run_name",
            "must be letters, digits, '.', '_' or '-'",
        )
        require(
            self.run_name.strip(".") != "",
            "run_name",
            f"{self.run_name!r} names the output folder itself or its parent",
        )

    def sampling(self, role: str = "assistant") -> Sampling:
        """The sampling settings of `role` ('assistant' or 'user') from `generation`."""
        lengths = {
            "assistant": self.generation.max_new_tokens,
            "user": self.generation.user_max_new_tokens,
        }
        if role not in lengths:
            raise ValueError(f"no sampling settings for role {role!r}; known: {sorted(lengths)}")
        return Sampling(lengths[role], self.generation.temperature, self.generation.top_p)

    @property
    def run_dir(self) -> Path:
        return resolve_path(self.output_dir) / self.run_name

    @property
    def run(self) -> RunFolder:
        """The run folder with every file name of the run (`run_folder.RunFolder`)."""
        return RunFolder(self.run_dir)

    @property
    def cache_file(self) -> Path:
        return resolve_path(self.cache_path)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source_file")
        data.pop("overrides")
        return data

    def dump(self, path: str | Path) -> Path:
        """Write the resolved parameters as YAML (atomically)."""
        from .io import write_text

        return write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def project_root() -> Path:
    """The folder holding `params/` (the repository), found from the working directory."""
    env = os.environ.get("COLLAB_UTILS_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return here


def resolve_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def load(path: str | Path, overrides: list[str] | str | dict | None = None) -> Params:
    """Read, override and validate a params file.

    `overrides`: a list of "key=value", one string of them separated by spaces (as papermill's
    `-p overrides "reward.lam=1e-4 seed=1"` passes it), or a dict. Without a `run_name`, the run
    is named after the file and the overrides that change it (`quickstart_lam0.0001`), so two
    runs with different overrides never share a folder.
    """
    file = resolve_path(path)
    raw = read_yaml(file)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{file}: expected a mapping of keys at the top level, got {describe(raw)}"
        )
    items = override_items(overrides, file)
    raw.setdefault("run_name", derived_run_name(file.stem, items))
    for key, value in items:
        set_dotted(raw, key, value, file)
    try:
        params = build(Params, raw, "")
    except KeyProblem as exc:
        raise ParamsError(f"{file}: key '{exc.key}': {exc.message}") from None
    params.source_file = str(file)
    params.overrides = [f"{key}={value}" for key, value in items]
    return params
