"""A Flan-style instruction mixture for SFT benchmarks: prompt/completion pairs from GLUE and Rotten Tomatoes.

    python benchmarks/sft_mixture.py OUT.jsonl [--glue ../shared/data/glue] [--per_task 800] [--seed 0]
        [--tasks mnli,qnli,qqp,sst2,rotten_tomatoes] [--format prompt_completion|messages|conversational]

Offline and deterministic: the same files and seed give the same bytes. From each task's training split
(GLUE's mnli, qnli, qqp and sst2 as jsonl with text / text_pair / label under --glue; Rotten Tomatoes as the
CLI's built-in `rotten_tomatoes`, loraplus.train.data._rotten_tomatoes_frame) `--per_task` examples are drawn at
random; each gets one of the task's instruction templates (four per task, Flan-style: different phrasings,
some listing the options) and one of three response styles: the bare answer (a label word or the option's
text), a short sentence stating it, or a sentence with a brief justification (a per-label template that may
quote the input). The tasks are then shuffled together.

Formats: `prompt_completion` (default; rows {prompt, completion, task, template, style}: what `loraplus train
--task sft` reads, and TRL's prompt-completion type), `messages` (OpenAI chat: a user turn and an assistant
turn) or `conversational` (TRL's conversational prompt-completion: prompt and completion as lists of turns).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

GLUE_TASKS = ("mnli", "qnli", "qqp", "sst2")
TASKS = (*GLUE_TASKS, "rotten_tomatoes")
FORMATS = ("prompt_completion", "messages", "conversational")
STYLES = ("label", "sentence", "justified")
STYLE_WEIGHTS = (0.4, 0.3, 0.3)

# The raw labels of each task -> a canonical name, which the templates' answers and justifications key on.
LABELS = {
    "mnli": {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"},
    "qnli": {"entailment": "entailment", "not_entailment": "not_entailment"},
    "qqp": {"0": "different", "1": "duplicate"},
    "sst2": {"0": "negative", "1": "positive"},
    "rotten_tomatoes": {"0": "negative", "1": "positive"},
}

# Per task: templates as (prompt, answers): the prompt fills {a} (text) and {b} (text_pair); answers maps each
# canonical label to the answer this template asks for (the option's text where the options are listed).
_NLI3_OPTIONS = "OPTIONS:\n- yes\n- it is not possible to tell\n- no"
_YES_MAYBE_NO = {"entailment": "yes", "neutral": "it is not possible to tell", "contradiction": "no"}
TEMPLATES = {
    "mnli": [
        ("Premise: {a}\nHypothesis: {b}\n\nDoes the premise entail the hypothesis?\n\n" + _NLI3_OPTIONS,
         _YES_MAYBE_NO),
        ("{a}\n\nBased on the paragraph above, can we conclude that \"{b}\"?\n\n" + _NLI3_OPTIONS, _YES_MAYBE_NO),
        ("Read the two sentences and say whether the first entails the second, contradicts it, or neither.\n"
         "Sentence 1: {a}\nSentence 2: {b}",
         {"entailment": "entailment", "neutral": "neither", "contradiction": "contradiction"}),
        ("If \"{a}\", does it follow that \"{b}\"? Answer yes, no, or maybe.",
         {"entailment": "yes", "neutral": "maybe", "contradiction": "no"}),
    ],
    "qnli": [
        ("Does the sentence \"{b}\" answer the question \"{a}\"?\n\nOPTIONS:\n- yes\n- no",
         {"entailment": "yes", "not_entailment": "no"}),
        ("Question: {a}\nContext: {b}\n\nDoes the context contain the answer to the question?",
         {"entailment": "yes", "not_entailment": "no"}),
        ("{a}\n\nIs \"{b}\" a good answer to the question above?\n\nOPTIONS:\n- yes\n- no",
         {"entailment": "yes", "not_entailment": "no"}),
        ("Decide whether the passage answers the question. Reply \"answers\" or \"does not answer\".\n"
         "Question: {a}\nPassage: {b}",
         {"entailment": "answers", "not_entailment": "does not answer"}),
    ],
    "qqp": [
        ("Are these two questions asking the same thing?\n1. {a}\n2. {b}\n\nOPTIONS:\n- no\n- yes",
         {"different": "no", "duplicate": "yes"}),
        ("Question 1: {a}\nQuestion 2: {b}\n\nWould the answer to one question also answer the other?",
         {"different": "no", "duplicate": "yes"}),
        ("\"{a}\" and \"{b}\": are these questions duplicates or different?",
         {"different": "different", "duplicate": "duplicates"}),
        ("Do the questions \"{a}\" and \"{b}\" have the same meaning?\n\nOPTIONS:\n- no\n- yes",
         {"different": "no", "duplicate": "yes"}),
    ],
    "sst2": [
        ("What is the sentiment of the following sentence?\n\n{a}\n\nOPTIONS:\n- negative\n- positive",
         {"negative": "negative", "positive": "positive"}),
        ("Sentence: \"{a}\"\nIs this phrase positive or negative?", {"negative": "negative", "positive": "positive"}),
        ("{a}\n\nDid the writer of this sentence like the film?\n\nOPTIONS:\n- no\n- yes",
         {"negative": "no", "positive": "yes"}),
        ("Classify the sentiment of this movie review snippet as good or bad: {a}",
         {"negative": "bad", "positive": "good"}),
    ],
    "rotten_tomatoes": [
        ("Review: {a}\n\nIs this movie review fresh or rotten?\n\nOPTIONS:\n- rotten\n- fresh",
         {"negative": "rotten", "positive": "fresh"}),
        ("{a}\n\nHow would you describe the sentiment of this review?\n\nOPTIONS:\n- negative\n- positive",
         {"negative": "negative", "positive": "positive"}),
        ("Would the critic who wrote \"{a}\" recommend the film?", {"negative": "no", "positive": "yes"}),
        ("Here is a critic's snippet: {a}\nWas the critic's opinion positive or negative?",
         {"negative": "negative", "positive": "positive"}),
    ],
}

SENTENCES = ("The answer is {answer}.", "Answer: {answer}.", "My answer: {answer}.")

# A brief justification per task and label; {a} / {b} quote (the start of) the input.
JUSTIFICATIONS = {
    "mnli": {
        "entailment": "The hypothesis only restates what the premise says, so it follows from it.",
        "neutral": "The premise does not say whether \"{b}\" is true, so it can be neither confirmed nor ruled out.",
        "contradiction": "The premise says something incompatible with \"{b}\", so the two cannot both be true.",
    },
    "qnli": {
        "entailment": "The sentence gives the information the question asks for.",
        "not_entailment": "The sentence is on a related topic but does not give what \"{a}\" asks for.",
    },
    "qqp": {
        "duplicate": "Both questions ask for the same information, only worded differently.",
        "different": "They share some words, but \"{a}\" and the other question ask for different things.",
    },
    "sst2": {
        "positive": "The wording of \"{a}\" praises the film.",
        "negative": "The wording of \"{a}\" criticises the film.",
    },
    "rotten_tomatoes": {
        "positive": "The critic's words, \"{a}\", are approving.",
        "negative": "The critic's words, \"{a}\", are disapproving.",
    },
}


def _quote(text: str, words: int = 12) -> str:
    """The first `words` words of `text`, with an ellipsis when cut (justifications quote the input)."""
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _read_glue(glue: Path, task: str) -> list[tuple[str, str | None, str]]:
    path = glue / task / "train.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; pass --glue with the folder holding {', '.join(GLUE_TASKS)}")
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                ex = json.loads(line)
                rows.append((str(ex["text"]), ex.get("text_pair"), str(ex["label"])))
    return rows


def _read_rotten_tomatoes() -> list[tuple[str, None, str]]:
    from loraplus.train.sources import _rotten_tomatoes_frame

    frame = _rotten_tomatoes_frame()
    return [(str(t), None, str(int(y))) for t, y in zip(frame["text"], frame["label"])]


def _example(task: str, row: tuple, rng: random.Random) -> dict:
    text, pair, raw = row
    label = LABELS[task][raw]
    k = rng.randrange(len(TEMPLATES[task]))
    template, answers = TEMPLATES[task][k]
    prompt = template.format(a=text.strip(), b=(pair or "").strip())
    answer = answers[label]
    style = rng.choices(STYLES, weights=STYLE_WEIGHTS)[0]
    if style == "label":
        completion = answer
    elif style == "sentence":
        completion = rng.choice(SENTENCES).format(answer=answer)
    else:
        why = JUSTIFICATIONS[task][label].format(a=_quote(text), b=_quote(pair or ""))
        completion = f"{answer[0].upper()}{answer[1:]}. {why}"
    return {"prompt": prompt, "completion": completion, "task": task, "template": k, "style": style}


def build_mixture(glue: Path, per_task: int = 800, seed: int = 0, tasks: tuple[str, ...] = TASKS) -> list[dict]:
    """`per_task` examples of each task, drawn and templated with `seed`, shuffled together."""
    rng = random.Random(seed)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"error: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    out = []
    for task in tasks:  # each task reads its rows in file order, then draws: the order of `tasks` is all that matters
        rows = _read_rotten_tomatoes() if task == "rotten_tomatoes" else _read_glue(Path(glue), task)
        rows = [r for r in rows if r[0].strip() and r[2] in LABELS[task]]
        for row in rng.sample(rows, min(per_task, len(rows))):
            out.append(_example(task, row, rng))
    rng.shuffle(out)
    return out


def as_format(row: dict, fmt: str) -> dict:
    """One mixture row in `fmt` (see FORMATS); the metadata (task, template, style) is kept beside."""
    meta = {k: row[k] for k in ("task", "template", "style")}
    user, assistant = {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}
    if fmt == "prompt_completion":
        return {"prompt": row["prompt"], "completion": row["completion"], **meta}
    if fmt == "messages":
        return {"messages": [user, assistant], **meta}
    if fmt == "conversational":
        return {"prompt": [user], "completion": [assistant], **meta}
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def write_jsonl(rows: list[dict], path: Path, fmt: str = "prompt_completion") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(as_format(row, fmt), ensure_ascii=False) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the JSONL file to write")
    parser.add_argument("--glue", type=Path, default=Path("../shared/data/glue"),
                        help="folder with mnli/, qnli/, qqp/, sst2/, each holding train.jsonl")
    parser.add_argument("--per_task", type=int, default=800, help="examples drawn from each task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--format", choices=FORMATS, default="prompt_completion")
    args = parser.parse_args(argv)
    rows = build_mixture(args.glue, args.per_task, args.seed, tuple(t for t in args.tasks.split(",") if t))
    write_jsonl(rows, args.out, args.format)
    counts = {}
    for row in rows:
        counts[row["task"]] = counts.get(row["task"], 0) + 1
    print(f"{len(rows)} examples ({', '.join(f'{t} {n}' for t, n in counts.items())}) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
