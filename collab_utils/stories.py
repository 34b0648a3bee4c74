"""Templated short stories with two referents: an ambiguous and a clear question per story.

The laptop experiment of issue 13 (`params/ask_laptop.yaml`). Each story names two referents
(two sisters, two boxes, two dogs ...) and one fact about each. Per story there are two qa tasks:

    ambiguous  "What did she buy?"   the user means one of the two; which one is not written
    clear      "What did Anna buy?"  one referent, named

Training and held-out stories come from different templates (`metadata["split"]`), so held-out
evaluation sees sentence shapes and questions the trained model never saw.

Two pieces make MR honest on these tasks (nothing here labels asking as good):

- `user_reply`: the user knows what they meant but not the answer (they ask because they do
  not know). A clarifying question on an ambiguous task is answered with the user's intent,
  drawn per simulated future from its seed (the assistant cannot know it); a question on a clear
  task gets "nothing to add, please answer"; any answer is accepted and ends the chat.
- `final_correctness` (R_ext): correctness of the final answer for the intent the user stated
  in the window; when no intent was stated (the assistant guessed), the expected correctness
  over the user's possible intents (uniform), which is what a guess is worth before the user
  says what they meant.

So a guess on an ambiguous question is worth 1/2 at best, a question followed by a right answer
is worth 1, and a question on a clear question only costs a round and its tokens.

    python -m collab_utils.stories      # rewrites collab_utils/data/stories.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .clarify import clarify_or_answer
from .task_types import Task

TERMINATE = "[[TERMINATE]]"
NOTHING_TO_ADD = "I have nothing to add. Please just answer my question."
ACCEPT = f"Thanks. {TERMINATE}"

_WOMEN = "Anna Beth Clara Dana Emma Fiona Grace Hanna Iris Julia Kate Laura Mia Nora Olive Paula"
_MEN = "Adam Ben Carl David Eric Frank George Henry Ivan Jack Kevin Leo Mark Nick Oscar Peter"
WOMEN, MEN = _WOMEN.split(), _MEN.split()
FRUITS = "apples pears plums grapes lemons cherries peaches melons".split()
TOYS = "balls sticks birds squirrels cats leaves ducks rabbits".split()
JOBS = "baker pilot nurse farmer lawyer painter chef plumber".split()
COLORS = "red blue green yellow black white purple orange".split()
THINGS = "coins letters buttons stamps keys marbles shells photos".split()
CITIES = "Paris Rome Madrid Vienna Lisbon Prague Dublin Oslo".split()
CAKES = "chocolate lemon carrot banana coconut almond cherry vanilla".split()
SPORTS = "tennis soccer hockey golf rugby cricket baseball volleyball".split()
BRANDS = "Toyota Volvo Honda Ford Fiat Audi Mazda Kia".split()
SUBJECTS = "history physics music biology chemistry geography art drama".split()
GIFTS = "bicycle guitar puzzle telescope camera kite watch backpack".split()
SURNAMES = "Smith Brown Lee Clark Hall Young King Wright Green Baker".split()

# name: (split, builder). A builder takes an rng and returns the story, the ambiguous question,
# the clear question about referent i, the user's statement of referent i, and the two answers.
TEMPLATES: dict[str, tuple[str, object]] = {}


def template(name: str, split: str):
    def register(builder):
        TEMPLATES[name] = (split, builder)
        return builder

    return register


def _two(rng, pool):
    return rng.sample(pool, 2)


@template("market", "train")
def _market(rng):
    a, b = _two(rng, WOMEN)
    x, y = _two(rng, FRUITS)
    story = f"{a} and {b} went to the market. {a} bought {x}. {b} bought {y}. They walked home."
    return story, "What did she buy?", [f"What did {n} buy?" for n in (a, b)], [a, b], [x, y]


@template("dogs", "train")
def _dogs(rng):
    owner = rng.choice(MEN)
    a, b = _two(rng, ["Rex", "Max", "Buddy", "Rocky", "Duke", "Bear", "Toby", "Milo"])
    x, y = _two(rng, TOYS)
    story = f"{owner} has two dogs, {a} and {b}. {a} loves to chase {x}. {b} loves to chase {y}."
    questions = [f"What does {n} love to chase?" for n in (a, b)]
    return story, "What does the dog love to chase?", questions, [a, b], [x, y]


@template("brothers", "train")
def _brothers(rng):
    a, b = _two(rng, MEN)
    x, y = _two(rng, JOBS)
    story = f"{a} and {b} are brothers. {a} works as a {x}. {b} works as a {y}."
    questions = [f"What is {n}'s job?" for n in (a, b)]
    return story, "What is the brother's job?", questions, [a, b], [x, y]


@template("boxes", "train")
def _boxes(rng):
    ca, cb = _two(rng, COLORS)
    x, y = _two(rng, THINGS)
    story = f"There were two boxes on the table, a {ca} one and a {cb} one. "
    story += f"The {ca} box held {x}. The {cb} box held {y}."
    questions = [f"What was in the {c} box?" for c in (ca, cb)]
    return story, "What was in the box?", questions, [f"the {ca} box", f"the {cb} box"], [x, y]


@template("sisters_trip", "train")
def _sisters_trip(rng):
    a, b = _two(rng, WOMEN)
    x, y = _two(rng, CITIES)
    story = f"{a} and {b} are sisters. Last summer {a} travelled to {x} and {b} travelled to {y}."
    questions = [f"Where did {n} travel?" for n in (a, b)]
    return story, "Where did the sister travel?", questions, [a, b], [x, y]


@template("bakers", "train")
def _bakers(rng):
    a, b = _two(rng, MEN)
    x, y = _two(rng, CAKES)
    story = f"{a} and {b} baked for the school fair. {a} made a {x} cake. {b} made a {y} cake."
    questions = [f"What cake did {n} make?" for n in (a, b)]
    return story, "What cake did he make?", questions, [a, b], [x, y]


@template("twins", "train")
def _twins(rng):
    a, b = _two(rng, WOMEN)
    x, y = _two(rng, SPORTS)
    story = f"{a} and {b} are twins. {a} plays {x} after school. {b} plays {y} on weekends."
    questions = [f"Which sport does {n} play?" for n in (a, b)]
    return story, "Which sport does the twin play?", questions, [a, b], [x, y]


@template("cars", "heldout")
def _cars(rng):
    family = rng.choice(SURNAMES)
    ca, cb = _two(rng, COLORS)
    x, y = _two(rng, BRANDS)
    story = f"The {family} family owns two cars, a {ca} one and a {cb} one. "
    story += f"The {ca} car is a {x}. The {cb} car is a {y}."
    questions = [f"What brand is the {c} car?" for c in (ca, cb)]
    return story, "What brand is the car?", questions, [f"the {ca} car", f"the {cb} car"], [x, y]


@template("teachers", "heldout")
def _teachers(rng):
    a, b = _two(rng, SURNAMES)
    x, y = _two(rng, SUBJECTS)
    story = f"Our school has two new teachers, Mr. {a} and Mr. {b}. "
    story += f"Mr. {a} teaches {x}. Mr. {b} teaches {y}."
    questions = [f"What does Mr. {n} teach?" for n in (a, b)]
    names = [f"Mr. {a}", f"Mr. {b}"]
    return story, "What does the new teacher teach?", questions, names, [x, y]


@template("uncles", "heldout")
def _uncles(rng):
    child = rng.choice(WOMEN)
    a, b = _two(rng, MEN)
    x, y = _two(rng, GIFTS)
    story = f"For her birthday {child} got presents from her two uncles, {a} and {b}. "
    story += f"{a} gave her a {x}. {b} gave her a {y}."
    questions = [f"What did {n} give her?" for n in (a, b)]
    return story, "What did her uncle give her?", questions, [a, b], [x, y]


def _intent(name: str, answer: str) -> dict:
    return {"name": name, "statement": f"I mean {name}.", "answer": answer}


def make_tasks(per_template: int = 40, seed: int = 0) -> list[Task]:
    """`per_template` stories per template, two tasks each, in round-robin order over templates
    and stories (so any prefix mixes templates, splits and ambiguous/clear)."""
    rows = []
    for index in range(per_template):
        for name, (split, builder) in TEMPLATES.items():
            rng = random.Random(f"{seed}/{name}/{index}")
            story, ambiguous, clear_questions, names, answers = builder(rng)
            intents = [_intent(n, a) for n, a in zip(names, answers)]
            pick = rng.randrange(2)
            base = {"source": "builtin:stories", "template": name, "split": split, "story": story}
            base["answers"] = answers
            for move, question, task_intents in (
                ("clarify", ambiguous, intents),
                ("answer", clear_questions[pick], [intents[pick]]),
            ):
                label = "ambiguous" if move == "clarify" else "clear"
                meaning = (
                    "you mean one of the two; you say which when asked"
                    if move == "clarify"
                    else f"you mean {intents[pick]['name']}"
                )
                rows.append(
                    Task(
                        id=f"stories/{name}/{index:03d}/{label}",
                        kind="qa",
                        goal=f"{story}\n\nYou ask: {question} ({meaning}).",
                        opening=f"{story}\n\n{question}",
                        reference=move,  # evaluation only (Table 2); never seen by R_ext or pairs
                        metadata={**base, "question": question, "intents": task_intents},
                    )
                )
    return rows


def is_story(task: Task) -> bool:
    return task.kind == "qa" and bool(task.metadata.get("intents"))


# --------------------------------------------------------------------------- user and R_ext


def stated_intent(task: Task, messages: list[dict]) -> dict | None:
    """The intent whose statement the user wrote in `messages`, if any."""
    said = " ".join(m["content"] for m in messages if m["role"] == "user")
    for intent in task.metadata["intents"]:
        if intent["statement"] in said:
            return intent
    return None


def user_reply(task: Task, history: list[dict], seed: int) -> tuple[str, bool]:
    """The story user's next message and whether it ends the chat; see the module docstring."""
    assistant = [m["content"] for m in history if m["role"] == "assistant"]
    if not assistant:
        return task.opening, False
    if clarify_or_answer(assistant[-1]) == "clarify":
        intents = task.metadata["intents"]
        if len(intents) > 1 and stated_intent(task, history) is None:
            return intents[seed % len(intents)]["statement"], False
        return NOTHING_TO_ADD, False
    return ACCEPT, True


def _stem(answer: str) -> str:
    """A plural's stem ('peaches' -> 'peac', 'plums' -> 'plum'), so 'a peach' counts."""
    answer = answer.lower()
    return answer[: max(4, len(answer) - 3)] if answer.endswith("s") else answer


def answer_correct(text: str, intent: dict, answers: list[str]) -> float:
    """1.0 when the first of the story's answers the text mentions is the intent's answer."""
    lowered = text.lower()
    found = [(lowered.find(_stem(a)), a) for a in answers if _stem(a) in lowered]
    return float(bool(found) and min(found)[1] == intent["answer"])


def final_correctness(task: Task, window: list[dict]) -> float:
    """R_ext of a future: correctness of its final answer for the user's intent (see above)."""
    answers = [m["content"] for m in window if m["role"] == "assistant"]
    answers = [a for a in answers if clarify_or_answer(a) == "answer"]
    if not answers:
        return 0.0
    stated = stated_intent(task, window)
    intents = [stated] if stated else task.metadata["intents"]
    scores = [answer_correct(answers[-1], i, task.metadata["answers"]) for i in intents]
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------------- the file


def write(path: str | Path | None = None, per_template: int = 40, seed: int = 0) -> Path:
    """Write the tasks as native jsonl (`builtin:stories`)."""
    path = Path(path or Path(__file__).parent / "data" / "stories.jsonl")
    with open(path, "w") as handle:
        for task in make_tasks(per_template, seed):
            record = {
                "id": task.id,
                "kind": task.kind,
                "goal": task.goal,
                "opening": task.opening,
                "reference": task.reference,
                "requirements": [],
                "metadata": task.metadata,
            }
            handle.write(json.dumps(record) + "\n")
    return path


if __name__ == "__main__":
    print(write())
