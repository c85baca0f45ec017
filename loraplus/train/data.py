"""Load dataset splits (local files, hub, built-in) and tokenise them for one task.

Tasks: "classification" (text [, text_pair] -> class or real value), "causal_lm" (loss on every
token), "sft" (prompt/response or chat messages, loss on the response), "label_words" (a causal LM
classifies by the log-probability of each class's label word after a prompt, the paper's Llama-7b
MNLI setup). No padding here: the collator pads each batch to its longest example.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from loraplus.core.errors import LoraPlusError
from loraplus.train.config import TrainConfig
from loraplus.train.labels import drop_unlabeled_test, label_encoding, require_columns, require_text
from loraplus.train import sources
from loraplus.train.metrics import label_word_ids

log = logging.getLogger(__name__)


def _check_length(max_length: int) -> None:
    if not isinstance(max_length, int) or max_length < 2:
        raise LoraPlusError(f"max_length={max_length} must be an integer of at least 2; pass --max_length 128")


def prepare_classification(splits: DatasetDict, tokenizer, *, text_column: str = "text",
                           text_pair_column: str | None = None, label_column: str = "label",
                           max_length: int = 128, label_names: list[str] | None = None,
                           ) -> tuple[DatasetDict, list[str] | None, bool]:
    """Tokenised splits (input_ids, attention_mask, labels), the class names and is_regression.

    String labels become ids of their sorted names; ClassLabel names are kept; whole-number labels
    (ints, or floats that are all whole) are classes: their distinct train values, sorted, become ids
    0..K-1 and their names ("1", "5"); non-integer floats make a regression task (label_names None).
    A train split with a single class is refused.
    """
    _check_length(max_length)
    require_columns(splits, [text_column, text_pair_column, label_column])
    splits = drop_unlabeled_test(splits, label_column)
    require_text(splits, [text_column, text_pair_column])
    to_id, names, is_regression = label_encoding(splits, label_column, label_names)

    def encode(batch):
        pair = batch[text_pair_column] if text_pair_column else None
        enc = tokenizer(batch[text_column], pair, truncation=True, max_length=max_length)
        enc["labels"] = [to_id(v) for v in batch[label_column]]
        return enc

    out = DatasetDict({split: ds.map(encode, batched=True, remove_columns=ds.column_names,
                                     desc=f"tokenising {split}") for split, ds in splits.items()})
    return out, names, is_regression


def prepare_causal_lm(splits: DatasetDict, tokenizer, *, text_column: str = "text",
                      max_length: int = 512) -> DatasetDict:
    """Tokenised splits with labels = input_ids (next-token loss on every token, eos appended)."""
    _check_length(max_length)
    require_columns(splits, [text_column])
    require_text(splits, [text_column])
    eos = tokenizer.eos_token_id

    def encode(batch):
        ids = tokenizer(batch[text_column], truncation=True,
                        max_length=max_length - (eos is not None))["input_ids"]
        # eos teaches where a document ends; the collator pads labels with -100, so pad == eos is safe.
        ids = [x + [eos] if eos is not None and (not x or x[-1] != eos) else x for x in ids]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": [list(x) for x in ids]}

    out = {}
    for split, ds in splits.items():
        enc = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenising {split}")
        out[split] = _drop_lossless(enc.filter(lambda e: len(e["input_ids"]) > 1), split, len(ds))
    return DatasetDict(out)


def _drop_lossless(ds: Dataset, split: str, n_before: int) -> Dataset:
    """Drop examples with no token to learn (all labels -100); a batch of them would make loss nan."""
    kept = ds.filter(lambda e: any(t != -100 for t in e["labels"]))
    if len(kept) < n_before:
        log.warning("%s: dropped %d of %d examples with nothing to learn after truncation",
                    split, n_before - len(kept), n_before)
    if len(kept) == 0:
        raise LoraPlusError(f"every {split} example lost its target tokens to truncation; raise --max_length")
    return kept


def _encode_segments(tokenizer, segments: list[tuple[str, bool]], max_length: int,
                     add_special_tokens: bool) -> dict:
    """Tokenise the concatenated segments; labels are the ids of tokens inside trainable segments, else -100.

    The text is tokenised whole (not segment by segment) so the ids are what the model sees at
    inference; character offsets say which segment each token came from.
    """
    text, spans, pos = "", [], 0
    for seg, train in segments:
        if train:
            spans.append((pos, pos + len(seg)))
        text, pos = text + seg, pos + len(seg)
    enc = tokenizer(text, add_special_tokens=add_special_tokens, truncation=True, max_length=max_length,
                    return_offsets_mapping=True)
    labels = [t if any(a < e and b > s for s, e in spans) else -100
              for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


# Chat roles as common dataset formats write them -> the roles chat templates know. ShareGPT writes
# human/gpt; some exports write bot, chatgpt or model for the assistant. Other roles (tool, ...) pass
# through unchanged, and a template that does not render them is caught in _chat_segments.
_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bot": "assistant",
                 "model": "assistant", "assistant": "assistant", "system": "system"}
SHAREGPT_COLUMN = "conversations"


def _normalise_chat(raw, where: str) -> list[dict]:
    """OpenAI ({role, content}) or ShareGPT ({from, value}) turns as [{role, content}] with standard roles."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LoraPlusError(f"{where}: the chat is a string but not JSON ({e.msg}); store a list of "
                                f"{{role, content}} turns") from e
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise LoraPlusError(f"{where}: a chat must be a list of {{role, content}} or {{from, value}} turns, "
                            f"got {type(raw).__name__}")
    turns = []
    for m in raw:
        # A column mixing both formats holds both key pairs, the absent ones as None.
        role = m.get("role") if m.get("role") is not None else m.get("from")
        content = m.get("content") if m.get("content") is not None else m.get("value")
        if role is None:
            raise LoraPlusError(f"{where}: a turn has no role (keys: {', '.join(m)}); give each turn "
                                f"role/content or from/value")
        role = str(role).strip()
        content = "" if content is None else str(content)
        turns.append({"role": _ROLE_ALIASES.get(role.lower(), role), "content": content})
    if not any(t["role"] == "assistant" and t["content"].strip() for t in turns):
        roles = ", ".join(dict.fromkeys(str(m.get("role") or m.get("from")) for m in raw)) or "none"
        raise LoraPlusError(f"{where} has no assistant turn to learn (roles: {roles}); sft learns assistant "
                            f"turns: mark them role assistant (or from gpt), or drop that example")
    return turns


def _render_chat(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> str:
    if not messages:
        return ""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja2 raises TemplateError; templates raise what they like
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoraPlusError(f"{where}: this tokenizer's chat template refuses the chat ({first}); use the roles "
                            f"it knows (user, assistant, and system if it has one)") from e


def _chat_segments(tokenizer, messages: list[dict], where: str = "a chat") -> list[tuple[str, bool]]:
    """Split a rendered chat into (text, is_assistant_turn) pieces by rendering growing prefixes."""
    full, segments, pos = _render_chat(tokenizer, messages, False, where), [], 0
    # A template may skip roles it does not know without an error: their text would silently vanish.
    dropped = next((m["role"] for m in messages if m["content"].strip() and m["content"].strip() not in full), None)
    if dropped is not None:
        raise LoraPlusError(f"{where}: this tokenizer's chat template does not render turns of role '{dropped}'; "
                            f"use the roles it knows (user, assistant, system)")
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        before = _render_chat(tokenizer, messages[:i], True, where)
        after = _render_chat(tokenizer, messages[:i + 1], False, where)
        if not (full.startswith(before) and full.startswith(after) and pos <= len(before) <= len(after)):
            raise LoraPlusError("this tokenizer's chat template rewrites earlier turns, so assistant turns "
                                "cannot be masked; use prompt/response columns instead of messages")
        segments += [(full[pos:len(before)], False), (full[len(before):len(after)], True)]
        pos = len(after)
    return segments + [(full[pos:], False)]


def _alpaca_prompt(instruction: str, context) -> str:
    """Alpaca's instruction, and its optional input below it."""
    context = "" if context is None else str(context).strip()
    return f"{instruction}\n\n{context}" if context else instruction


def sft_format(columns: list[str], prompt_column: str = "prompt", response_column: str = "response",
               messages_column: str = "messages") -> tuple[str, dict]:
    """(format, its columns) of SFT data, detected from its columns, first match wins:

    prompt_column + response_column; messages_column (OpenAI {role, content} turns, or ShareGPT turns);
    "conversations" (ShareGPT {from, value} turns, human/gpt/system); "instruction" + "output" (+ optional
    "input": Alpaca, the input goes below the instruction); "prompt" + "completion".
    """
    if prompt_column in columns and response_column in columns:
        return "prompt_response", {"prompt": prompt_column, "response": response_column}
    for col in (messages_column, SHAREGPT_COLUMN):
        if col in columns:
            return "chat", {"messages": col}
    if "instruction" in columns and "output" in columns:
        return "alpaca", {"prompt": "instruction", "response": "output",
                          "input": "input" if "input" in columns else None}
    if "prompt" in columns and "completion" in columns:
        return "prompt_response", {"prompt": "prompt", "response": "completion"}
    raise LoraPlusError(f"sft needs columns '{prompt_column}' and '{response_column}', or '{messages_column}' "
                        f"(columns: {', '.join(columns)}); also read: conversations (ShareGPT), "
                        f"instruction/input/output (Alpaca), prompt/completion; or pass --prompt_column/"
                        f"--response_column")


def prepare_sft(splits: DatasetDict, tokenizer, *, prompt_column: str = "prompt", response_column: str = "response",
                messages_column: str = "messages", max_length: int = 512) -> DatasetDict:
    """Tokenised instruction data with the loss on responses only (prompt tokens labelled -100).

    The format is read from the columns (sft_format): prompt/response (or prompt/completion, or
    Alpaca's instruction/input/output) are rendered with the tokenizer's chat template when it has
    one (user = prompt, assistant = response), else "prompt\\nresponse<eos>". Chats (OpenAI
    `messages` of {role, content}, ShareGPT `conversations` of {from, value}, human/gpt mapped to
    user/assistant) need a chat template; the loss is on assistant turns only. An example without a
    response or assistant turn, or with roles the template does not render, is refused.
    """
    _check_length(max_length)
    if not getattr(tokenizer, "is_fast", False):
        raise LoraPlusError("sft needs a fast tokenizer (character offsets); save the model with a tokenizer.json")
    first = splits["train"] if "train" in splits else next(iter(splits.values()))  # eval reads a test file alone
    kind, cols = sft_format(first.column_names, prompt_column, response_column, messages_column)
    log.info("sft data format: %s (columns %s)", kind, ", ".join(c for c in cols.values() if c))
    require_columns(splits, list(cols.values()))
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if kind == "chat":
        if not has_template:
            raise LoraPlusError(f"column '{cols['messages']}' needs a tokenizer with a chat template; "
                                f"use prompt/response columns or a chat model")

        def segments(ex, where):
            return _chat_segments(tokenizer, _normalise_chat(ex[cols["messages"]], where), where), False
    else:
        require_text(splits, [cols["prompt"], cols["response"]])

        def segments(ex, where):
            prompt, response = str(ex[cols["prompt"]]), str(ex[cols["response"]])
            if kind == "alpaca":
                prompt = _alpaca_prompt(prompt, ex[cols["input"]] if cols["input"] else None)
            if not response.strip():
                raise LoraPlusError(f"{where} has an empty response ('{cols['response']}'); fill it or drop "
                                    f"that example")
            if not has_template:
                return [(prompt + "\n", False), (response + (tokenizer.eos_token or ""), True)], True
            user = [{"role": "user", "content": prompt}]
            before = _render_chat(tokenizer, user, True, where)
            full = _render_chat(tokenizer, user + [{"role": "assistant", "content": response}], False, where)
            if not full.startswith(before):
                raise LoraPlusError("this tokenizer's chat template does not extend the prompt with the response; "
                                    "remove its chat_template to use plain prompt\\nresponse formatting")
            return [(before, False), (full[len(before):], True)], False

    out = {}
    for split, ds in splits.items():
        def encode(ex, i, split=split):
            segs, add_special = segments(ex, f"example {i + 1} of the {split} split")
            return _encode_segments(tokenizer, segs, max_length, add_special)

        enc = ds.map(encode, with_indices=True, remove_columns=ds.column_names, desc=f"tokenising {split}")
        out[split] = _drop_lossless(enc, split, len(ds))
    return DatasetDict(out)


DEFAULT_TEMPLATE = "Text: {text}\nAnswer:"
DEFAULT_PAIR_TEMPLATE = "Sentence 1: {text}\nSentence 2: {text_pair}\nAnswer:"


def prepare_label_words(splits: DatasetDict, tokenizer, *, text_column: str = "text",
                        text_pair_column: str | None = None, label_column: str = "label",
                        label_words: list[str] | None = None, prompt_template: str | None = None,
                        max_length: int = 256, label_names: list[str] | None = None,
                        ) -> tuple[DatasetDict, list[str], list[str]]:
    """Prompt + label word per example, loss on the label word's tokens only; returns (splits, label
    names, label words).

    Rows keep `label` (class id) and `prompt_length` (input_ids[:prompt_length] is the prompt) for
    metrics.score_label_words. The template fills {text} and {text_pair}; a prompt too long is cut
    from the left (after bos) so its closing "Answer:" cue stays.
    """
    _check_length(max_length)
    require_columns(splits, [text_column, text_pair_column, label_column])
    splits = drop_unlabeled_test(splits, label_column)
    require_text(splits, [text_column, text_pair_column])
    to_id, names, is_regression = label_encoding(splits, label_column, label_names)
    if is_regression:
        raise LoraPlusError("label_words needs class labels, not real numbers; use --task classification")
    words = list(label_words) if label_words else list(names)
    if len(words) != len(names):
        raise LoraPlusError(f"{len(words)} label words for {len(names)} classes ({', '.join(names)}); "
                            f"pass one --label_words entry per class, in class order")
    template = prompt_template or (DEFAULT_PAIR_TEMPLATE if text_pair_column else DEFAULT_TEMPLATE)
    if "{text}" not in template or (text_pair_column and "{text_pair}" not in template):
        raise LoraPlusError("prompt_template must contain {text}" + (" and {text_pair}" if text_pair_column else ""))
    word_ids = label_word_ids(tokenizer, words)
    bos = tokenizer.bos_token_id
    bos = [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []
    budget = max_length - max(len(w) for w in word_ids) - len(bos)
    if budget < 1:
        raise LoraPlusError(f"max_length={max_length} leaves no room for a prompt; raise --max_length")

    def encode(ex):
        try:
            prompt = template.format(text=ex[text_column], text_pair=ex[text_pair_column] if text_pair_column else "")
        except (KeyError, IndexError, ValueError) as e:
            raise LoraPlusError(f"prompt_template has a placeholder other than {{text}}/{{text_pair}} ({e}); "
                                f"double other braces as {{{{ }}}}") from e
        prompt_ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"][-budget:]
        y = to_id(ex[label_column])
        ids = prompt_ids + word_ids[y]
        return {"input_ids": ids, "attention_mask": [1] * len(ids),
                "labels": [-100] * len(prompt_ids) + word_ids[y], "prompt_length": len(prompt_ids), "label": y}

    out = DatasetDict({split: ds.map(encode, remove_columns=ds.column_names, desc=f"tokenising {split}")
                       for split, ds in splits.items()})
    return out, names, words


_LM_KEYS = ("input_ids", "attention_mask", "labels")


class _LMCollator:
    """Pads input_ids/attention_mask with the pad id and labels with -100; drops other fields
    (label, prompt_length), which a causal LM's forward must not receive."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        self.pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def __call__(self, features):
        return self.pad([{k: f[k] for k in _LM_KEYS if k in f} for f in features])


def collator_for(task: str, tokenizer):
    """Dynamic-padding collator for `task`: each batch is padded to its longest example only."""
    from transformers import DataCollatorWithPadding

    if task == "classification":
        return DataCollatorWithPadding(tokenizer)
    if task in ("causal_lm", "sft", "label_words"):
        return _LMCollator(tokenizer)
    raise LoraPlusError(f"unknown task '{task}'; use one of: classification, causal_lm, sft, label_words")


@dataclass
class PreparedData:
    """Tokenised splits and what the task learned about its labels."""

    splits: object  # datasets.DatasetDict
    label_names: list[str] | None = None
    is_regression: bool = False
    label_words: list[str] | None = None


def prepare_data(cfg: TrainConfig, tokenizer, label_names: list[str] | None = None, *,
                 drop_test: bool = False, test_file_only: bool = False) -> PreparedData:
    """Load the splits named by `cfg` and tokenise them for its task (without the test split if drop_test).

    test_file_only: read cfg.test_file alone, as its only split, "test" (scoring a trained run with its
    label_names: the training data need not exist any more).
    """
    from datasets import DatasetDict


    if test_file_only:
        test = sources.load_file(cfg.test_file, "test", cfg.task == "causal_lm")
        if cfg.max_eval_samples:
            test = test.select(range(min(cfg.max_eval_samples, len(test))))
        splits = DatasetDict({"test": test})
    else:
        splits = sources.load_splits(
        dataset_name=None if cfg.train_file else cfg.dataset_name, dataset_config_name=cfg.dataset_config_name,
        train_file=cfg.train_file, validation_file=cfg.validation_file, test_file=cfg.test_file,
        validation_split_ratio=cfg.validation_split_ratio, seed=cfg.seed,
        max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples,
        text_files=cfg.task == "causal_lm",
        )
    if drop_test:  # tuning runs: the test split is never tokenised, evaluated or seen
        splits.pop("test", None)
    common = dict(text_column=cfg.text_column, max_length=cfg.max_length)
    if cfg.task == "classification":
        tok, names, regression = prepare_classification(
            splits, tokenizer, text_pair_column=cfg.text_pair_column, label_column=cfg.label_column,
            label_names=label_names, **common)
        return PreparedData(tok, names, regression)
    if cfg.task == "label_words":
        tok, names, words = prepare_label_words(
            splits, tokenizer, text_pair_column=cfg.text_pair_column, label_column=cfg.label_column,
            label_words=cfg.label_words, prompt_template=cfg.prompt_template, label_names=label_names, **common)
        return PreparedData(tok, names, False, words)
    if cfg.task == "sft":
        return PreparedData(prepare_sft(splits, tokenizer, prompt_column=cfg.prompt_column,
                                             response_column=cfg.response_column,
                                             messages_column=cfg.messages_column, max_length=cfg.max_length))
    return PreparedData(prepare_causal_lm(splits, tokenizer, **common))
