"""Run parameters: YAML files validated into dataclasses.

    params = config.load("params/quickstart.yaml", ["reward.lam=1e-4"])

An unknown key, a wrong type or an impossible value raises `ParamsError` naming the key and
the file. The notebooks take two papermill parameters, `params_file` and `overrides`, and call
`load` with them, so a notebook, the CLI and a sweep all read parameters the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import reprlib
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .run_folder import RunFolder


class ParamsError(ValueError):
    """A params file or override that cannot be used; the message names the file and key."""


BACKENDS = ("hf", "openai", "agenda")
DOC_METRICS = ("paper_bleu", "word_bleu")  # metrics.DOC_METRICS
TOKEN_TURNS = ("window", "assistant")
# The paper's token price λ per task kind (its runs: documents 1e-4, code and math 5e-4).
LAM_PRESETS = {"doc": 1e-4, "code": 5e-4, "math": 5e-4, "qa": 5e-4}


@dataclass
class ModelSpec:
    """One role's model. `backend: agenda` is the rule-based user simulator (user role only)."""

    backend: str = "hf"
    model: str = "embedded"
    adapter: str | None = None
    dtype: str = "auto"
    batch_size: int = 16
    load_in_4bit: bool = False
    base_url: str | list[str] | None = None  # openai: one server or a list (least-loaded)
    adapter_name: str | None = None  # openai: a LoRA the server serves under this name
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8  # openai: requests in flight per server
    max_retries: int = 4
    timeout_s: float = 120.0  # openai: one deadline per request (connect to last byte)

    def check(self, key: str) -> None:
        _require(self.backend in BACKENDS, f"{key}.backend", f"must be one of {BACKENDS}")
        _require(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            f"{key}.dtype",
            "must be auto, float32, bfloat16 or float16",
        )
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _require(self.concurrency >= 1, f"{key}.concurrency", "must be >= 1")
        _require(self.max_retries >= 0, f"{key}.max_retries", "must be >= 0")
        _require(0 < self.timeout_s <= 86400, f"{key}.timeout_s", "must be in (0, 86400]")
        if self.backend == "openai":
            _require(bool(self.base_url), f"{key}.base_url", "is required for backend openai")
            urls = [self.base_url] if isinstance(self.base_url, str) else self.base_url
            for i, url in enumerate(urls):
                where = f"{key}.base_url" + ("" if isinstance(self.base_url, str) else f"[{i}]")
                _require(
                    isinstance(url, str) and bool(re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", url)),
                    where,
                    f"must be an http:// or https:// URL, got {url!r}",
                )
                _require(urls.index(url) == i, where, f"lists {url} twice")
        _require(
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
            _require(
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
        _require(self.limit is None or self.limit >= 1, f"{key}.limit", "must be >= 1 or null")
        _require(0 <= self.holdout_fraction < 1, f"{key}.holdout_fraction", "must be in [0, 1)")
        _require(0 <= self.accept_bleu <= 1, f"{key}.accept_bleu", "must be in [0, 1]")
        _require(
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
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _require(0 <= self.temperature <= 10, f"{key}.temperature", "must be in [0, 10]")
        _require(0 < self.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")


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
        _require(self.n_candidates >= 1, f"{key}.n_candidates", "must be >= 1")
        _require(self.n_samples >= 1, f"{key}.n_samples", "must be >= 1")
        _require(self.window >= 0, f"{key}.window", "must be >= 0")
        _require(self.lam is None or self.lam >= 0, f"{key}.lam", "must be >= 0 or null")
        _require(self.mu >= 0, f"{key}.mu", "must be >= 0")
        _require(
            self.token_turns in TOKEN_TURNS, f"{key}.token_turns", f"must be one of {TOKEN_TURNS}"
        )
        _require(0 <= self.proactive_fraction <= 1, f"{key}.proactive_fraction", "in [0, 1]")
        _require(
            0 <= self.fewshot_fraction <= 1 - self.proactive_fraction,
            f"{key}.fewshot_fraction",
            "must be in [0, 1 - proactive_fraction]",
        )
        _require(
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
        _require(self.max_turns >= 1, f"{key}.max_turns", "must be >= 1")
        _require(self.min_gap >= 0, f"{key}.min_gap", "must be >= 0")
        _require(self.pairs_per_turn >= 1, f"{key}.pairs_per_turn", "must be >= 1")
        _require(
            self.path_lam is None or self.path_lam >= 0, f"{key}.path_lam", "must be >= 0 or null"
        )


@dataclass
class TrainParams:
    """DPO with LoRA (paper defaults); 4-bit NF4 QLoRA when CUDA is present."""

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

    def check(self, key: str) -> None:
        for name in ("lora_r", "lora_alpha", "batch_size", "gradient_accumulation_steps"):
            _require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _require(0 <= self.lora_dropout < 1, f"{key}.lora_dropout", "must be in [0, 1)")
        _require(self.beta > 0, f"{key}.beta", "must be > 0")
        _require(0 < self.learning_rate <= 1, f"{key}.learning_rate", "must be in (0, 1]")
        _require(0 < self.epochs <= 1000, f"{key}.epochs", "must be in (0, 1000]")
        _require(self.max_length >= 16, f"{key}.max_length", "must be >= 16")
        _require(self.logging_steps >= 1, f"{key}.logging_steps", "must be >= 1")
        _require(self.sft_weight >= 0, f"{key}.sft_weight", "must be >= 0")
        _require(
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
        _require(self.rounds >= 1, f"{key}.rounds", "must be >= 1")
        _require(self.qa_limit is None or self.qa_limit >= 1, f"{key}.qa_limit", ">= 1 or null")


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
        _require(
            bool(re.fullmatch(r"[A-Za-z0-9._-]+", self.run_name)),
            "run_name",
            "must be letters, digits, '.', '_' or '-'",
        )
        _require(
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


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _KeyError(key, message)


class _KeyError(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key, self.message = key, message


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `5e-4` as a string; scientific notation without a dot is a float here.

    Aliases (`*name`) are refused as soon as they are read: a few hundred bytes of nested
    aliases expand to gigabytes (an "alias bomb"), and a params file never needs them.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML aliases (*{event.anchor}) are not allowed in params and sweep files",
                event.start_mark,
            )
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str):
    """A `--set` value: YAML scalar syntax (`1e-4`, `true`, `null`, `[1, 2]`)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(file: Path, what: str = "params file"):
    """The YAML data of `file`, or `ParamsError` naming it: missing, a directory, empty, binary,
    not UTF-8, not valid YAML, or using aliases."""
    if file.is_dir():
        raise ParamsError(f"{file}: is a directory, not a {what}")
    if not file.is_file():
        raise ParamsError(f"{file}: {what} not found")
    data = file.read_bytes()
    if not data.strip():
        raise ParamsError(f"{file}: the {what} is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ParamsError(f"{file}: the {what} is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        raise ParamsError(f"{file}: the {what} is a binary file (it holds NUL bytes), not YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError(
            f"{file}: line {line}: the {what} is not UTF-8 text (byte {exc.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ParamsError(f"{file}:{where} not valid YAML: {problem}") from None


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
            f"{file}: expected a mapping of keys at the top level, got {_describe(raw)}"
        )
    items = _override_items(overrides, file)
    raw.setdefault("run_name", derived_run_name(file.stem, items))
    for key, value in items:
        _set_dotted(raw, key, value, file)
    try:
        params = _build(Params, raw, "")
    except _KeyError as exc:
        raise ParamsError(f"{file}: key '{exc.key}': {exc.message}") from None
    params.source_file = str(file)
    params.overrides = [f"{key}={value}" for key, value in items]
    return params


# Overrides that say where a run goes, not what it does: they do not rename it.
PLACEMENT_KEYS = ("run_name", "output_dir", "cache_path")


def derived_run_name(stem: str, items: list[tuple[str, object]]) -> str:
    """The file's stem, plus each override that changes the run (`quickstart_lam0.0001`)."""
    changes = [f"{k.split('.')[-1]}{v}" for k, v in items if k not in PLACEMENT_KEYS]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join([stem, *changes]))


def _override_items(overrides, file: Path) -> list[tuple[str, object]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    items = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"{file}: override '{item}' is not key=value")
        try:
            items.append((key.strip(), parse_value(value)))
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc
            raise ParamsError(f"{file}: override '{item}': {problem}") from None
    return items


def _set_dotted(raw: dict, key: str, value, file: Path) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"{file}: override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def _build(cls, data, prefix: str):
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "(top level)"
        raise _KeyError(where, f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise _KeyError(dotted, f"unknown key{hint}; known keys: {', '.join(names)}")
        kwargs[key] = _convert(hints[key], value, dotted)
    obj = cls(**kwargs)
    obj.check(prefix.rstrip("."))
    return obj


def _convert(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise _KeyError(key, f"must not be null (expected {_name(options)})")
    for option in options:
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise _KeyError(key, f"must be a finite number, got {_describe(value)}")
            return number
        if option is str and isinstance(value, str):
            return value
    raise _KeyError(key, f"expected {_name(options)}, got {_describe(value)}")


def _name(options) -> str:
    return " or ".join(o.__name__ for o in options if o is not type(None))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 80, 80, 40


def _describe(value) -> str:
    """The type and a bounded repr of `value` (never expands a huge or deeply nested value)."""
    return f"{type(value).__name__} {_REPR.repr(value)}"
