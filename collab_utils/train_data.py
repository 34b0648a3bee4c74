"""Training data for `train`, checked and tokenised without TRL: preference pairs for DPO and
conversations for SFT.

Bad input fails here, before any weights load: an empty set, a record in another format, a
conversation without an assistant turn, a tokenizer without a chat template, records that
leave no token to train on within `train.max_length`.

SFT masks: `sft_features` renders each conversation once and marks its assistant tokens (every
assistant turn: its content and end-of-turn tokens; the role header `<|im_start|>assistant\\n`
is prompt). A turn's tokens are those between the conversation rendered up to that turn with
the generation prompt and the conversation rendered through the turn, so any chat template that
renders a conversation as the concatenation of its turns works, `{% generation %}` markers or not.
"""

from __future__ import annotations

from pathlib import Path


def preference_records(pairs: list[dict] | None, name: str) -> list[dict]:
    """The prompt/chosen/rejected part of each pair, checked; metadata stays out of training."""
    if not pairs:
        raise ValueError(
            f"{name} is empty: there are no preference pairs to train on. The pair builder drops "
            "turns whose best and worst MR differ by less than `pairs.min_gap`; lower min_gap, "
            "score more candidates per turn, or generate more turns."
        )
    records = []
    for index, pair in enumerate(pairs):
        record = {key: pair.get(key) for key in ("prompt", "chosen", "rejected")}
        if not all(is_messages(record[key]) for key in record):
            raise ValueError(
                f"{name}[{index}]: expected TRL's conversational preference format: 'prompt', "
                "'chosen' and 'rejected' as non-empty lists of {'role', 'content'} messages"
            )
        if record["prompt"][-1]["role"] != "user":
            raise ValueError(f"{name}[{index}]: the prompt must end with a user message")
        if any(m["role"] != "assistant" for m in record["chosen"] + record["rejected"]):
            raise ValueError(f"{name}[{index}]: chosen and rejected must be assistant messages")
        records.append(record)
    return records


def sft_records(conversations: list[dict] | str | Path | None, name: str = "sft") -> list[dict]:
    """The conversations of an SFT set ({"messages": [...]} each, as `pairs.sft_examples` writes
    them to sft.jsonl), checked: each needs at least one assistant turn to learn from.

    `conversations` is the list, or the path of a JSON-lines file (errors then name the file).
    """
    if isinstance(conversations, (str, Path)):
        from .pairs import read_jsonl

        name = str(conversations)
        if not Path(conversations).is_file():
            raise FileNotFoundError(f"{name}: no SFT file; stage 03 writes it (run.sft)")
        conversations = read_jsonl(conversations)
    if not conversations:
        raise ValueError(
            f"{name} is empty: there are no conversations to fine-tune on. Stage 03 writes one "
            "per task's MR-chosen path (run.sft)."
        )
    records = []
    for index, record in enumerate(conversations):
        where = f"{name}: record {index + 1}"
        messages = record.get("messages") if isinstance(record, dict) else None
        if not is_messages(messages):
            raise ValueError(
                f"{where}: expected {{'messages': [...]}}, a non-empty list of "
                "{'role', 'content'} messages"
            )
        roles = {m["role"] for m in messages}
        if not roles <= {"system", "user", "assistant"}:
            raise ValueError(
                f"{where}: unknown role(s) {sorted(roles - {'system', 'user', 'assistant'})}"
            )
        if "assistant" not in roles:
            raise ValueError(
                f"{where}: no assistant turn, so SFT has nothing to learn from it (the loss is "
                "on assistant turns only)"
            )
        records.append(
            {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        )
    return records


def is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)
    )


def load_chat_tokenizer(path: str | Path, name: str):
    """The model's tokenizer, with a pad token; fails when it has no chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise ValueError(
            f"{name}: the tokenizer has no chat template, so conversations cannot be rendered for "
            "training. Use an instruct/chat model, or add a chat_template.jinja to the model folder."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fitting_pairs(records: list[dict], tokenizer, max_length: int, name: str) -> list[dict]:
    """The pairs whose prompt leaves room for a reply within max_length (TRL drops the rest)."""
    kept = [r for r in records if len(prompt_ids(tokenizer, r["prompt"])) < max_length]
    if not kept:
        raise ValueError(
            f"{name}: every prompt fills train.max_length = {max_length} tokens, so no reply "
            "token is left to train on; raise max_length."
        )
    _report_dropped(name, len(records), len(kept), "prompt >= max_length")
    return kept


def prompt_ids(tokenizer, prompt: list[dict]) -> list[int]:
    return _ids(tokenizer, prompt, add_generation_prompt=True)


def _ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )["input_ids"]


def sft_features(tokenizer, messages: list[dict], where: str = "conversation") -> dict:
    """{"input_ids", "assistant_masks"} of one conversation: mask 1 on the tokens of every
    assistant turn (what the model writes, end-of-turn token included), 0 on system and user
    turns and on the assistant role headers. TRL's SFTTrainer turns the mask into labels
    (-100 where it is 0), as it does for its own `assistant_only_loss`."""
    input_ids = _ids(tokenizer, messages)
    mask = [0] * len(input_ids)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _ids(tokenizer, messages[:turn], add_generation_prompt=True) if turn else []
        through = _ids(tokenizer, messages[: turn + 1])
        start, end = len(before), len(through)
        if input_ids[:start] != before or input_ids[:end] != through:
            raise ValueError(
                f"{where}: the chat template does not render this conversation as the "
                f"concatenation of its turns (turn {turn}), so its assistant tokens cannot be "
                "located; SFT needs a template that appends each turn."
            )
        mask[start:end] = [1] * (end - start)
    return {"input_ids": input_ids, "assistant_masks": mask}


def sft_dataset_rows(records: list[dict], tokenizer, max_length: int, name: str) -> list[dict]:
    """Tokenised SFT rows, truncated to max_length (keep the start, as TRL does); conversations
    with no assistant token left within max_length are dropped, all of them dropped fails."""
    rows = []
    for index, record in enumerate(records):
        features = sft_features(tokenizer, record["messages"], f"{name}: record {index + 1}")
        features = {key: value[:max_length] for key, value in features.items()}
        if any(features["assistant_masks"]):
            rows.append(features)
    if not rows:
        raise ValueError(
            f"{name}: no conversation has an assistant token within train.max_length = "
            f"{max_length} tokens; raise max_length."
        )
    _report_dropped(name, len(records), len(rows), "no assistant token within max_length")
    return rows


def _report_dropped(name: str, total: int, kept: int, why: str) -> None:
    if kept < total:
        print(f"{name}: {total - kept} of {total} left out ({why})")
