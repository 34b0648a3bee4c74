"""Issue 13: templated stories, the story user, R_ext, and MR that prefers asking only where it
pays; pairs come from MR alone (no rule-based ask label reaches the pair builder)."""

import dataclasses
import json

import pytest

from collab_utils import config, pairs, reward, simulate, stories, tasks
from collab_utils.llm import Generation
from collab_utils.run_folder import RunFolder
from collab_utils.users import AgendaUser


def test_stories_split_by_template_and_pair_up():
    made = stories.make_tasks(per_template=5)
    assert len(made) == 5 * len(stories.TEMPLATES) * 2
    by_split = {}
    for task in made:
        by_split.setdefault(task.metadata["split"], set()).add(task.metadata["template"])
    assert by_split["train"].isdisjoint(by_split["heldout"])
    assert len(by_split["heldout"]) >= 3
    ambiguous = [t for t in made if t.reference == "clarify"]
    assert all(len(t.metadata["intents"]) == 2 for t in ambiguous)
    assert all(len(t.metadata["intents"]) == 1 for t in made if t.reference == "answer")
    # the shipped file is the generator's output
    shipped = tasks.load("builtin:stories")
    assert [t.id for t in shipped] == [t.id for t in stories.make_tasks()]
    assert {t.metadata["split"] for t in shipped[:20]} == {"train", "heldout"}


def _story(label="ambiguous"):
    return next(t for t in stories.make_tasks(1) if t.id == f"stories/market/000/{label}")


def test_story_user_states_intent_only_when_asked_and_ends_on_an_answer():
    task = _story()
    user = AgendaUser()
    opening = [{"role": "user", "content": task.opening}]
    asked = [*opening, {"role": "assistant", "content": "Do you mean the first or the second?"}]
    turns = user.respond([(task, asked, 0), (task, asked, 1)])
    assert {t.text for t in turns} == {i["statement"] for i in task.metadata["intents"]}
    assert not any(t.terminated for t in turns)
    answered = [*opening, {"role": "assistant", "content": "She bought apples."}]
    assert user.respond([(task, answered, 0)])[0].terminated
    clear = _story("clear")
    asked = [{"role": "user", "content": clear.opening}, {"role": "assistant", "content": "Who?"}]
    assert user.respond([(clear, asked, 0)])[0].text == stories.NOTHING_TO_ADD


def test_final_correctness_is_expected_over_intents_until_the_user_says():
    task = _story()
    a, b = task.metadata["intents"]
    guess = [{"role": "assistant", "content": f"She bought {a['answer']}."}]
    assert stories.final_correctness(task, guess) == 0.5
    both = [{"role": "assistant", "content": f"{b['answer']} and {a['answer']}."}]
    assert stories.final_correctness(task, both) == 0.5  # the first answer named counts
    asked = [
        {"role": "assistant", "content": "Which of them do you mean?"},
        {"role": "user", "content": b["statement"]},
        {"role": "assistant", "content": f"{b['name']} bought {b['answer']}."},
    ]
    assert stories.final_correctness(task, asked) == 1.0
    assert stories.final_correctness(task, asked[:1]) == 0.0  # a question is no answer


class Reader:
    """A scripted assistant: answers the question for the intent the user stated, else for the
    first referent (a guess)."""

    def chat(self, conversations, **kwargs):
        replies = []
        for messages in conversations:
            task = next(t for t in TASKS if t.opening == messages[0]["content"])
            stated = stories.stated_intent(task, messages)
            intent = stated or task.metadata["intents"][0]
            replies.append(Generation(f"{intent['name']}: {intent['answer']}.", 0, 0))
        return replies

    def count_tokens(self, texts):
        return [len(text.split()) for text in texts]


TASKS = [_story("ambiguous"), _story("clear")]
ASK = "Which of them do you mean?"


def _mr(window: int, reference_flip: bool = False):
    used = TASKS
    if reference_flip:  # the evaluation label must not matter to MR
        flip = {"clarify": "answer", "answer": "clarify"}
        used = [dataclasses.replace(t, reference=flip[t.reference]) for t in TASKS]
    contexts = [simulate.Context.opening(t) for t in used]
    candidates = [
        simulate.handwritten([("ask", ASK), ("guess", Reader().chat([c.messages])[0].text)])
        for c in contexts
    ]
    futures = simulate.rollout(
        contexts,
        candidates,
        assistant=Reader(),
        user=AgendaUser(),
        n_samples=4,
        window=window,
        seed=0,
        sampling=config.Sampling(),
        progress=False,
    )
    table = reward.score_futures(futures, contexts, candidates, judge=None, seed=0, lam=2e-3, mu=0)
    summary = reward.summarize(table)
    return table, {(r.task_id.split("/")[-1], r.candidate_kind): r.mr for r in summary.itertuples()}


def test_mr_prefers_asking_exactly_where_the_question_is_ambiguous():
    _, mr = _mr(window=2)
    assert mr[("ambiguous", "ask")] > mr[("ambiguous", "guess")]
    assert mr[("clear", "guess")] > mr[("clear", "ask")]
    _, blind = _mr(window=0)  # w = 0 cannot see what the question buys
    assert blind[("ambiguous", "guess")] > blind[("ambiguous", "ask")]


def test_pairs_come_from_mr_alone_never_from_a_rule_label():
    table, _ = _mr(window=2)
    flipped, _ = _mr(window=2, reference_flip=True)
    assert table["r_star"].tolist() == flipped["r_star"].tolist()
    candidates = reward.summarize(table).assign(
        prompt=lambda f: [[{"role": "user", "content": t}] for t in f["task_id"]],
        kind=lambda f: f["candidate_kind"],
    )
    assert not {"reference", "move", "qa_correct", "clarify"} & set(candidates.columns)
    built, _ = pairs.build_pairs(candidates, min_gap=0.0)
    moves = {p["task_id"].split("/")[-1]: p["chosen"][0]["content"] for p in built}
    assert moves["ambiguous"] == ASK and moves["clear"] != ASK


def test_fewshot_candidates_are_a_recorded_kind():
    assert simulate.candidate_kinds(4, 0.0, 0.5) == ["plain", "plain", "fewshot", "fewshot"]
    messages = simulate.with_fewshot([{"role": "user", "content": "x"}])
    assert messages[: len(simulate.FEWSHOT_MESSAGES)] == simulate.FEWSHOT_MESSAGES
    with pytest.raises(config.ParamsError):
        config.load("params/ask_laptop.yaml", ["reward.fewshot_fraction=1.5"])


@pytest.mark.slow
def test_smoke_recipe_pairs_hold_asking_and_answering(tmp_path):
    """A smoke-sized ask_laptop run: its MR-chosen pairs contain both moves."""
    from collab_utils import ask_experiment

    out = ask_experiment.run(
        "params/ask_laptop.yaml",
        [
            "run_name=ask_smoke",
            f"output_dir={tmp_path}",
            f"cache_path={tmp_path}/cache.sqlite",
            "tasks.limit=20",
            "reward.n_candidates=6",
            "train.epochs=1",
            "eval.rounds=2",
        ],
    )
    moves = {key.split("/")[-1] for key in out["pair_kinds"]}
    assert moves == {"clarify", "answer"}, out["pair_kinds"]
    assert json.loads(RunFolder(tmp_path / "ask_smoke").metrics.read_text())["intervals"]


def test_ask_metrics_from_conversations_without_a_judge():
    from collab_utils import evaluate

    transcripts = evaluate.evaluate(
        TASKS,
        {"reader": Reader()},
        user=AgendaUser(),
        judge=None,
        rounds=2,
        seed=0,
        sampling=config.Sampling(),
    )
    found = evaluate.ask_metrics(transcripts, TASKS)["reader"]
    assert found["clarify_when_ambiguous"]["mean"] == 0.0  # the reader always answers
    assert found["answer_when_clear"]["mean"] == 1.0
    assert found["final_answer_accuracy"]["n"] == 2
    low, high = (
        evaluate.bootstrap_ci([0, 1] * 20)["low"],
        evaluate.bootstrap_ci([0, 1] * 20)["high"],
    )
    assert 0.3 < low < 0.5 < high < 0.7
