"""User simulators, candidates and the lock-step rollout engine."""

from __future__ import annotations

import pytest

from collab_utils import chatview, config, llm, simulate, tasks
from collab_utils.llm import Generation
from collab_utils.seeds import derive_seed

CASE = tasks.load("builtin:case_study")[0]
NAIVE = f"Here you go:\n```python\n{CASE.metadata['naive_solution']}```"
REFERENCE = f"Here you go:\n```python\n{CASE.reference}```"
ASK_FIRST = (
    "Before I write it: what should happen if the file does not exist? "
    "And should punctuation be kept as separate tokens?"
)


def history(*replies: str) -> list[dict]:
    """The case-study opening followed by alternating assistant/user messages."""
    messages = [{"role": "user", "content": CASE.opening}]
    for i, text in enumerate(replies):
        messages.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return messages


class ScriptedBackend:
    """TEST DOUBLE of a backend: answers every request with the next scripted text."""

    def __init__(self, texts: list[str]):
        self.texts, self.model_calls, self.generated = list(texts), 0, 0

    def chat(self, conversations, *, max_new_tokens, temperature, top_p=1.0, seed, desc=None):
        self.model_calls += 1
        self.generated += len(conversations)
        return [Generation(self.texts.pop(0), 10, 5) for _ in conversations]

    def count_tokens(self, texts):
        return [len(text.split()) for text in texts]


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
    ],
)
def test_role_slip_flags_assistant_like_text(text):
    assert simulate.role_slip(text, CASE) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Thanks, but it crashes when the file is missing. Can you fix that?",
        "I want punctuation kept as separate tokens.",
        "Looks good. [[TERMINATE]]",
        "Hmm, surely there is a shorter way?",
    ],
)
def test_role_slip_accepts_user_text(text):
    assert simulate.role_slip(text, CASE) is None


def test_clean_drops_labels_and_the_assistant_part():
    assert simulate._clean('USER: "Make it faster."\nASSISTANT: Sure!') == "Make it faster."


# ----------------------------------------------------------------------- agenda user


def test_agenda_user_opens_reveals_complains_and_terminates():
    user = simulate.AgendaUser()
    assert user.reply(CASE, history()).text == CASE.opening
    revealed = user.reply(CASE, history(ASK_FIRST))
    assert [r.statement in revealed.text for r in CASE.requirements] == [True, True]
    complaint = user.reply(CASE, history(NAIVE))
    assert CASE.requirements[0].statement in complaint.text and not complaint.terminated
    satisfied = user.reply(CASE, history(ASK_FIRST, revealed.text, REFERENCE))
    assert satisfied.terminated and simulate.TERMINATE in satisfied.text
    # everything revealed, still failing: nothing left to say
    stuck = user.reply(CASE, history(ASK_FIRST, revealed.text, NAIVE))
    assert stuck.terminated


def test_agenda_user_ignores_questions_off_its_agenda():
    turn = simulate.AgendaUser().reply(CASE, history("Which Python version do you use?"))
    assert not turn.terminated
    assert not any(r.statement in turn.text for r in CASE.requirements)


# -------------------------------------------------------------------------- LLM user


def test_llm_user_retries_then_repairs_slips():
    """Scripted replies: item 0 is fine, item 1 slips once, item 2 slips twice."""
    backend = ScriptedBackend(
        ["It must not crash on a missing file.", "Sure, here is code.", "As an AI, I can help."]
        + ["Please keep the commas.", "Here's the function."]
    )
    user = simulate.LLMUser(backend, max_new_tokens=16)
    items = [(CASE, history(NAIVE), s) for s in (1, 2, 3)]
    fine, retried, repaired = user.respond(items)
    assert backend.model_calls == 2  # one call, one retry call for the two slips
    assert (fine.role_slip, fine.retried, fine.repaired) == (False, False, False)
    assert (retried.role_slip, retried.retried, retried.repaired) == (True, True, False)
    assert retried.text == "Please keep the commas."
    assert (repaired.role_slip, repaired.retried, repaired.repaired) == (True, True, True)
    assert repaired.text == simulate.AgendaUser().reply(CASE, history(NAIVE)).text


def test_llm_user_never_sees_the_system_prompt():
    secret = "SECRET-SYSTEM-PROMPT"
    view = simulate._user_view([{"role": "system", "content": secret}, *history(NAIVE)])
    prompt = simulate.user_prompt(CASE, view)
    assert secret not in str(prompt) and CASE.goal in prompt[0]["content"]
    # roles swapped: the user's opening is the model's own turn, the assistant's reply the other
    assert [m["role"] for m in prompt] == ["system", "assistant", "user"]


@pytest.fixture(scope="module")
def embedded():
    return llm.load_backend("embedded", None)


def test_llm_user_on_embedded_model_writes_user_turns(embedded):
    user = simulate.LLMUser(embedded, max_new_tokens=40)
    items = [(CASE, history(reply), seed) for reply in (NAIVE, ASK_FIRST) for seed in (0, 1)]
    calls = embedded.model_calls
    turns = user.respond(items)
    assert embedded.model_calls - calls <= 2
    for turn in turns:
        assert turn.text and simulate.role_slip(turn.text, CASE) is None
        assert turn.retried == turn.role_slip and (turn.retried or not turn.repaired)


# ------------------------------------------------------------------------ candidates


def test_candidates_mix_kinds_in_one_call_with_derived_seeds(embedded):
    contexts = [simulate.Context.opening(t) for t in tasks.load("builtin:code")[:2]]
    calls = embedded.model_calls
    candidates = simulate.generate_candidates(
        contexts, embedded, n=3, proactive_fraction=0.34, seed=7, max_new_tokens=8, temperature=0.8
    )
    assert embedded.model_calls == calls + 1
    assert [c.kind for c in candidates[0]] == ["plain", "plain", "proactive"]
    task = contexts[1].task
    assert candidates[1][2].seed == derive_seed(7, task.id, 0, 2, "candidate")


# --------------------------------------------------------------------- rollout engine


def _setup():
    code_tasks = tasks.load("builtin:code")[:2]
    contexts = [simulate.Context.opening(t) for t in code_tasks]
    candidates = [
        simulate.handwritten(
            [
                ("answer-now", f"```python\n{t.metadata['naive_solution']}```"),
                ("ask-first", "Should spaces or quotes get special handling?"),
            ]
        )
        for t in code_tasks
    ]
    return contexts, candidates


def test_window_zero_scores_the_candidate_alone():
    contexts, candidates = _setup()
    backend = ScriptedBackend([])
    futures = simulate.rollout(
        contexts,
        candidates,
        assistant=backend,
        user=simulate.AgendaUser(),
        n_samples=3,
        window=0,
        seed=0,
        max_new_tokens=8,
        temperature=0.8,
    )
    assert backend.model_calls == 0 and len(futures) == 4  # one future per candidate
    assert all(len(f.window) == 1 and f.stop_reason == "window" for f in futures)


def test_token_budget_stops_a_future_once_its_assistant_tokens_reach_it():
    contexts, candidates = _setup()
    long_reply = "word " * 30  # 30 tokens for ScriptedBackend.count_tokens; one per request
    settings = dict(user=simulate.AgendaUser(), n_samples=1, window=2, seed=0, progress=False)
    sampling = dict(max_new_tokens=8, temperature=0.8)

    unlimited = ScriptedBackend([long_reply] * 8)
    futures = simulate.rollout(contexts, candidates, assistant=unlimited, **settings, **sampling)
    assert unlimited.model_calls == 2 and all(f.stop_reason == "window" for f in futures)

    limited = ScriptedBackend([long_reply] * 8)
    futures = simulate.rollout(
        contexts, candidates, assistant=limited, token_budget=20, **settings, **sampling
    )
    assert limited.model_calls == 1  # every future was over budget after round 1
    assert all(f.stop_reason == "max_tokens" and f.rounds == 1 for f in futures)


def test_make_user_takes_the_acceptance_bleu_from_the_params():
    params = config.load("params/smoke.yaml", ["tasks.accept_bleu=0.9"])
    assert simulate.make_user(params).bleu_threshold == 0.9
    llm_params = config.load(
        "params/smoke.yaml", ["tasks.accept_bleu=0.9", "models.user.backend=hf"]
    )
    assert simulate.make_user(llm_params, ScriptedBackend([])).fallback.bleu_threshold == 0.9


def test_lockstep_and_one_at_a_time_give_identical_futures():
    """float32: CPU matmuls in bf16 depend on the batch shape, float32 ones do not here."""
    backend = llm.load_backend({"model": "embedded", "dtype": "float32"}, None)
    contexts, candidates = _setup()
    settings = dict(
        assistant=backend,
        user=simulate.AgendaUser(),
        n_samples=2,
        window=2,
        seed=3,
        max_new_tokens=24,
        temperature=0.8,
    )
    calls = backend.model_calls
    lockstep = simulate.rollout(contexts, candidates, progress=False, **settings)
    lockstep_calls = backend.model_calls - calls
    single = simulate.rollout_one_at_a_time(contexts, candidates, **settings)
    single_calls = backend.model_calls - calls - lockstep_calls
    assert [f.messages for f in lockstep] == [f.messages for f in single]
    assert [(f.stop_reason, f.seed, f.assistant_tokens) for f in lockstep] == [
        (f.stop_reason, f.seed, f.assistant_tokens) for f in single
    ]
    assert lockstep_calls <= 2  # one assistant call per round
    assert single_calls >= 4 * lockstep_calls


def test_bench_replays_the_engine_requests_exactly():
    """The raw-generate baseline re-sends the engine's requests as they were when sent."""
    result = simulate.bench_rollouts(
        n_contexts=1, n_candidates=2, n_samples=2, window=2, max_new_tokens=16
    )
    assert result["raw_replies_differing"] == 0
    assert result["raw_tokens"] == result["engine_tokens"]
    assert result["lockstep_model_calls"] == 2
    assert result["one_at_a_time_model_calls"] >= 2 * result["lockstep_model_calls"]


def test_chatview_renders_roles_goal_and_escapes():
    page = chatview.show(history(NAIVE), goal="<b>goal</b>", title="t")._repr_html_()
    assert "hidden goal" in page and "&lt;b&gt;goal" in page and "<pre" in page
    assert page.count("<b>user</b>") == 1 and page.count("<b>assistant</b>") == 1
