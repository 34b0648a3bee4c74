"""Preference pairs: gaps, ties, k pairs per turn, min_gap, TRL format, JSONL round trip."""

import math

import pandas as pd
import pytest

from collab_utils import pairs
from collab_utils.run_folder import RunFolder


def user(text):
    return [{"role": "user", "content": text}]


def candidate_table():
    """Six (task, turn) groups, each built to exercise one rule of the pair builder."""
    rows = []

    def add(task_id, turn, prompt, scored):
        for index, (response, mr) in enumerate(scored):
            kind = "proactive" if index % 2 == 0 else "plain"
            rows.append(
                {
                    "task_id": task_id,
                    "turn": turn,
                    "candidate": index,
                    "kind": kind,
                    "prompt": prompt,
                    "response": response,
                    "mr": mr,
                }
            )

    sort_prompt = user("Sort my list.")
    add("a", 0, sort_prompt, [("Ascending?", 0.9), ("r1", 0.5), ("r2", 0.3), ("sorted(x)", 0.1)])
    follow_up = [*sort_prompt, {"role": "assistant", "content": "Ascending?"}, *user("Yes.")]
    add("a", 1, follow_up, [("t0", 0.4), ("t1", 0.4)])  # tie
    add("b", 0, user("Email my boss."), [("About?", 0.30), ("x", math.nan), ("Hi.", 0.25)])
    add("b", 1, user("Thanks."), [("You're welcome.", 0.7)])  # single candidate
    add("c", 0, user("Solve it."), [("x = 2", 0.6), ("x = 2", 0.2)])  # identical responses
    add("c", 1, user("And now?"), [("y", math.nan), ("z", 0.5)])  # one scored candidate
    return pd.DataFrame(rows)


def test_best_vs_worst_per_turn_with_every_drop_counted():
    built, report = pairs.build_pairs(candidate_table(), min_gap=0.05)
    assert report == {
        "turns": 6,
        "candidates": 14,
        "pairs": 2,
        "nan_mr": 2,
        "single_candidate": 2,
        "tie": 1,
        "identical_response": 1,
        "below_min_gap": 0,
    }
    first, second = built
    assert first["prompt"] == user("Sort my list.")
    assert first["chosen"] == [{"role": "assistant", "content": "Ascending?"}]
    assert first["rejected"] == [{"role": "assistant", "content": "sorted(x)"}]
    assert (first["task_id"], first["turn"], first["rank"]) == ("a", 0, 0)
    assert (first["chosen_candidate"], first["rejected_candidate"]) == (0, 3)
    assert (first["chosen_kind"], first["rejected_kind"]) == ("proactive", "plain")
    assert (first["chosen_mr"], first["rejected_mr"]) == (0.9, 0.1)
    assert first["gap"] == pytest.approx(0.8)
    # 0.30 - 0.25 is 0.04999999999999999 in floating point: still meets min_gap 0.05.
    assert (second["task_id"], second["chosen_mr"], second["rejected_mr"]) == ("b", 0.30, 0.25)
    assert second["gap"] == pytest.approx(0.05)


def test_k_pairs_per_turn_use_distinct_candidates_and_each_meets_min_gap():
    built, report = pairs.build_pairs(candidate_table(), min_gap=0.05, pairs_per_turn=2)
    assert report["pairs"] == 3
    turn_a0 = [(p["rank"], p["chosen_candidate"], p["rejected_candidate"]) for p in built[:2]]
    assert turn_a0 == [(0, 0, 3), (1, 1, 2)]
    assert built[1]["gap"] == pytest.approx(0.2)

    built, report = pairs.build_pairs(candidate_table(), min_gap=0.3, pairs_per_turn=2)
    assert [(p["task_id"], p["rank"]) for p in built] == [("a", 0)]
    assert report["below_min_gap"] == 2  # a/0 second pair (gap 0.2) and b/0 (gap 0.05)
    assert report["pairs"] == 1


def test_ties_are_dropped_even_with_zero_min_gap():
    built, report = pairs.build_pairs(candidate_table(), min_gap=0.0)
    assert report["tie"] == 1
    assert all(p["gap"] > 0 for p in built)


def test_bad_tables_fail_with_clear_errors():
    table = candidate_table()
    with pytest.raises(ValueError, match=r"lacks columns \['mr'\]"):
        pairs.build_pairs(table.drop(columns="mr"), min_gap=0.05)
    ends_with_assistant = table.copy()
    ends_with_assistant["prompt"] = [[{"role": "assistant", "content": "hi"}]] * len(table)
    with pytest.raises(ValueError, match="must end with a user message"):
        pairs.build_pairs(ends_with_assistant, min_gap=0.05)
    mixed = table.copy()
    mixed.at[0, "prompt"] = user("Something else.")
    with pytest.raises(ValueError, match="task 'a' turn 0: candidates answer different prompts"):
        pairs.build_pairs(mixed, min_gap=0.05)


def test_pairs_are_trl_conversational_preference_examples(embedded_tokenizer):
    from trl.data_utils import apply_chat_template, is_conversational, maybe_apply_chat_template

    built, _ = pairs.build_pairs(candidate_table(), min_gap=0.05)
    pair = built[0]
    assert is_conversational(pair)
    rendered = apply_chat_template(pair, embedded_tokenizer)
    assert rendered == maybe_apply_chat_template(pair, embedded_tokenizer)
    assert rendered["prompt"].endswith(
        "<|im_start|>user\nSort my list.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert rendered["chosen"] == "Ascending?<|im_end|>\n"
    assert rendered["rejected"] == "sorted(x)<|im_end|>\n"


def test_jsonl_round_trip_and_bad_line(tmp_path):
    table = candidate_table()
    table["task_id"] = table["task_id"].astype("category")  # numpy-ish values must serialise
    built, _ = pairs.build_pairs(table, min_gap=0.05)
    path = pairs.write_jsonl(built, RunFolder(tmp_path).pairs)
    assert pairs.read_jsonl(path) == built
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=rf"{path.name}:3: not valid JSON"):
        pairs.read_jsonl(path)


def test_sft_examples_from_chosen_paths(embedded_tokenizer):
    from trl.data_utils import apply_chat_template, is_conversational

    path = [
        *user("Sort my list."),
        {"role": "assistant", "content": "Ascending?"},
        *user("Yes."),
        {"role": "assistant", "content": "sorted(x)"},
        *user("Thanks!"),
    ]
    (example,) = pairs.sft_examples([path])
    assert example == {"messages": path[:4]}
    assert is_conversational(example)
    text = apply_chat_template(example, embedded_tokenizer)["text"]
    assert text.endswith("<|im_start|>assistant\nsorted(x)<|im_end|>\n")
    with pytest.raises(ValueError, match="conversation 0: no user turn answered"):
        pairs.sft_examples([user("Hello?")])


@pytest.fixture(scope="module")
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from collab_utils import models

    return AutoTokenizer.from_pretrained(models.resolve("embedded"))
