"""User simulators: role slips, the agenda user, the LLM user and its repairs."""

from __future__ import annotations

from pathlib import Path

import pytest
from case_chat import ASK_FIRST, CASE, NAIVE, REFERENCE, ScriptedBackend, history

from collab_utils import config, session, tasks, users
from collab_utils.config import Sampling
from collab_utils.seeds import derive_seed

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------ role slips


@pytest.mark.parametrize(
    "text",
    [
        "Sure, here is the function you asked for.",
        "Here's a version that handles missing files.",
        "As an AI language model, I cannot run code.",
        "I can help you with that! What format is the file?",
        "The user will now explain the goal.",
        "Let me know if you need anything else.",
        "```python\ndef tokenize_file(path):\n    return []\n```",
        "The total is \\boxed{9}.",
        "",
        "Of course! Here's the code:\n```python\ndef tokenize_file(path):\n    return []\n```",
        "Absolutely! Let me write that for you.",
        "Sure, I can help you with that.",
        "Certainly. Below is the function.",
    ],
)
def test_role_slip_flags_assistant_like_text(text):
    assert users.role_slip(text, CASE) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Thanks, but it crashes when the file is missing. Can you fix that?",
        "I want punctuation kept as separate tokens.",
        "Looks good. [[TERMINATE]]",
        "Hmm, surely there is a shorter way?",
        "Sure, go ahead and write it.",
        "Of course! A missing file should give an empty list.",
        "Absolutely. Keep punctuation as separate tokens.",
        "Yes, please keep the commas.",
        "Certainly not, just return the tokens.",
    ],
)
def test_role_slip_accepts_user_text(text):
    assert users.role_slip(text, CASE) is None


def test_clean_drops_labels_and_the_assistant_part():
    assert users._clean('USER: "Make it faster."\nASSISTANT: Sure!') == "Make it faster."


# ----------------------------------------------------------------------- agenda user


def test_agenda_user_opens_reveals_complains_and_terminates():
    user = users.AgendaUser()
    assert user.reply(CASE, history()).text == CASE.opening
    revealed = user.reply(CASE, history(ASK_FIRST))
    assert [r.statement in revealed.text for r in CASE.requirements] == [True, True]
    complaint = user.reply(CASE, history(NAIVE))
    assert CASE.requirements[0].statement in complaint.text and not complaint.terminated
    satisfied = user.reply(CASE, history(ASK_FIRST, revealed.text, REFERENCE))
    assert satisfied.terminated and users.TERMINATE in satisfied.text
    # everything revealed, still failing: nothing left to say
    stuck = user.reply(CASE, history(ASK_FIRST, revealed.text, NAIVE))
    assert stuck.terminated


def test_agenda_user_ignores_questions_off_its_agenda():
    turn = users.AgendaUser().reply(CASE, history("Which Python version do you use?"))
    assert not turn.terminated
    assert not any(r.statement in turn.text for r in CASE.requirements)


# -------------------------------------------------------------------------- LLM user


def test_llm_user_retries_then_repairs_slips():
    """Scripted replies: item 0 is fine, item 1 slips once, item 2 slips twice."""
    backend = ScriptedBackend(
        ["It must not crash on a missing file.", "Sure, here is code.", "As an AI, I can help."]
        + ["Please keep the commas.", "Here's the function."]
    )
    user = users.LLMUser(backend, Sampling(max_new_tokens=16))
    items = [(CASE, history(NAIVE), s) for s in (1, 2, 3)]
    fine, retried, repaired = user.respond(items)
    assert backend.model_calls == 2  # one call, one retry call for the two slips
    assert (fine.role_slip, fine.retried, fine.repaired) == (False, False, False)
    assert (retried.role_slip, retried.retried, retried.repaired) == (True, True, False)
    assert retried.text == "Please keep the commas."
    assert (repaired.role_slip, repaired.retried, repaired.repaired) == (True, True, True)
    assert repaired.text == users.AgendaUser().reply(CASE, history(NAIVE)).text


def test_llm_user_never_sees_the_system_prompt():
    secret = "SECRET-SYSTEM-PROMPT"
    view = users.user_view([{"role": "system", "content": secret}, *history(NAIVE)])
    prompt = users.user_prompt(CASE, view)
    assert secret not in str(prompt) and CASE.goal in prompt[0]["content"]
    # roles swapped: the user's opening is the model's own turn, the assistant's reply the other
    assert [m["role"] for m in prompt] == ["system", "assistant", "user"]


def test_llm_user_on_embedded_model_sends_the_model_replies_or_repairs(embedded):
    """Each turn is the model's own reply to the simulator prompt (first or retry seed), or,
    only where both slipped, the agenda user's reply."""
    sampling = Sampling(max_new_tokens=40)
    user = users.LLMUser(embedded, sampling)
    items = [(CASE, history(reply), seed) for reply in (NAIVE, ASK_FIRST) for seed in (0, 1)]
    calls = embedded.model_calls
    turns = user.respond(items)
    assert embedded.model_calls - calls <= 2
    for (task, messages, seed), turn in zip(items, turns):
        prompt = users.user_prompt(task, messages)
        first = users._clean(embedded.chat([prompt], seed=seed, **sampling.kwargs)[0].text)
        assert turn.role_slip == (users.role_slip(first, task) is not None)
        if not turn.role_slip:
            assert turn.text == first
            continue
        retry_seed = derive_seed(seed, "retry")
        retry = users._clean(embedded.chat([prompt], seed=retry_seed, **sampling.kwargs)[0].text)
        if turn.repaired:
            assert users.role_slip(retry, task) is not None
            assert turn.text == users.AgendaUser().reply(task, messages).text
        else:
            assert turn.text == retry


def test_make_user_takes_its_settings_from_the_params():
    params = config.load("params/smoke.yaml", ["tasks.accept_bleu=0.9"])
    assert session.make_user(params).bleu_threshold == 0.9
    llm_params = config.load(
        "params/smoke.yaml",
        [
            "tasks.accept_bleu=0.9",
            "models.user.backend=hf",
            "generation.user_max_new_tokens=17",
            "generation.top_p=0.5",
        ],
    )
    user = session.make_user(llm_params)
    assert user.fallback.bleu_threshold == 0.9
    assert user.sampling == Sampling(17, llm_params.generation.temperature, 0.5)


# ------------------------------------------------------------------- the first turn


HUMANEVAL = tasks.load("humaneval")


def test_agenda_user_opens_with_the_vague_opening():
    picked = [CASE, *HUMANEVAL[:3]]
    assert users.openings(users.AgendaUser(), picked, seed=0) == [t.opening for t in picked]


def test_llm_user_writes_the_first_turn_from_the_goal():
    backend = ScriptedBackend(["i need a tokenizer function for a text file, can u help"])
    prompts = []
    chat = backend.chat
    backend.chat = lambda conversations, **kw: (
        prompts.extend(conversations) or chat(conversations, **kw)
    )
    user = users.LLMUser(backend, Sampling(max_new_tokens=16))
    (first,) = users.openings(user, [CASE], seed=0)
    assert first == "i need a tokenizer function for a text file, can u help"
    (prompt,) = prompts
    assert CASE.goal in prompt[0]["content"] and prompt[-1]["role"] == "user"
    assert [m["role"] for m in prompt] == ["system", "user"]  # no chat yet: asked to start it


def test_a_first_turn_that_pastes_the_goal_or_ends_the_chat_is_repaired():
    task = HUMANEVAL[0]
    pasted = f"Please do this: {task.goal}"
    backend = ScriptedBackend(
        [pasted, f"Hi {users.TERMINATE}", pasted, "need help with a function"]
    )
    user = users.LLMUser(backend, Sampling(max_new_tokens=16))
    repaired, retried = user.respond([(task, [], 1), (task, [], 2)])
    assert users.copies_goal(pasted, task) and not users.copies_goal(task.opening, task)
    assert (repaired.text, repaired.repaired, repaired.terminated) == (task.opening, True, False)
    assert (retried.text, retried.retried, retried.repaired) == (
        "need help with a function",
        True,
        False,
    )


def test_copies_goal_needs_half_the_goal_verbatim():
    task = HUMANEVAL[0]
    words = task.goal.split()
    assert users.copies_goal(" ".join(words[: len(words) * 3 // 4]), task)
    assert not users.copies_goal(" ".join(words[: len(words) // 5]), task)
    short = tasks.Task(id="s", kind="math", goal="What is 1+1?", opening="o", reference="2")
    assert users.copies_goal("so, what is 1 + 1?", short)
    assert not users.copies_goal("Can you help with a sum?", short)


def test_simulator_prompt_has_the_papers_rules_and_no_single_number_rule():
    math_task = tasks.load(DATA / "math_problems.jsonl")[0]
    system = users.user_prompt(math_task, [])[0]["content"]
    assert "never copy your goal verbatim" in system
    assert "Keep the chat on your goal" in system
    assert "cannot help you any further" in system and users.TERMINATE in system
    assert "one final number" not in system and "interval" in system


def test_llm_user_first_turns_on_embedded_model_never_hold_the_problem(embedded):
    """The embedded model writes first turns for HumanEval and MATH tasks; none holds the full
    problem statement (the model's text, or the vague opening where it pasted the goal)."""
    picked = [HUMANEVAL[0], tasks.load(DATA / "math_problems.jsonl")[1]]
    user = users.LLMUser(embedded, Sampling(max_new_tokens=32))
    firsts = users.openings(user, picked, seed=0)
    for task, first in zip(picked, firsts, strict=True):
        statement = task.metadata.get("prompt") or task.goal
        assert " ".join(statement.split()) not in " ".join(first.split())
        assert not users.copies_goal(first, task)
        assert first.strip()
