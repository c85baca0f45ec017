"""A task's columns and labels, checked and encoded before tokenising: missing or non-text columns, unlabelled
test rows, class names (from the training split, or fixed by a label_words list), regression targets."""

from __future__ import annotations

import logging

import numpy as np
from datasets import ClassLabel, DatasetDict

from loraplus.core.errors import LoraPlusError

log = logging.getLogger(__name__)


def require_columns(splits: DatasetDict, columns: list[str | None]) -> None:
    """Raise LoraPlusError naming the first missing column and the columns present."""
    for split, ds in splits.items():
        for col in columns:
            if col is not None and col not in ds.column_names:
                raise LoraPlusError(f"column '{col}' not in the {split} split (columns: "
                                    f"{', '.join(ds.column_names)}); pass the right --*_column names")


def require_text(splits: DatasetDict, columns: list[str | None]) -> None:
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


def drop_unlabeled_test(splits: DatasetDict, label_column: str) -> DatasetDict:
    """Without a test split whose labels are all hidden (-1 or empty, as in GLUE on the hub)."""
    if "test" in splits and all(v is None or v == -1 for v in splits["test"][label_column]):
        log.warning("the test split has no labels (all -1 or empty); it is not used")
        return DatasetDict({k: v for k, v in splits.items() if k != "test"})
    return splits


def label_encoding(splits: DatasetDict, label_column: str, label_names: list[str] | None = None):
    """(to_id, label_names, is_regression): how raw labels map to class ids (or floats).

    `label_names` (a trained run's classes) fixes the mapping instead of deriving it from train, so
    an adapter is scored with the ids it was trained with.
    """
    if label_names is not None:
        return fixed_label_encoding(splits, label_column, list(label_names))
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


def fixed_label_encoding(splits: DatasetDict, label_column: str, names: list[str]):
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
