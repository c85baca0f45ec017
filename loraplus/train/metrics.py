"""Evaluation metrics: accuracy / F1 / MCC for classes, Pearson / Spearman for regression, and the
label-word scorer (argmax_k sum log p(word_k tokens | prompt)) for classification by a causal LM.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from loraplus.core.errors import LoraPlusError
from loraplus.speed.target_logits import TargetRowsPreprocessor


def classification_metrics(predictions, labels, num_labels: int) -> dict[str, float]:
    """Accuracy, F1 (binary F1 of class 1 when num_labels == 2, else macro F1) and Matthews corr."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    average = "binary" if num_labels == 2 else "macro"
    # zero_division=0: a model that never predicts a class scores 0 there instead of warning.
    f1 = f1_score(labels, predictions, average=average, labels=list(range(num_labels)) if average == "macro"
                  else None, zero_division=0)
    return {"accuracy": float(accuracy_score(labels, predictions)), "f1": float(f1),
            "mcc": float(matthews_corrcoef(labels, predictions))}


def regression_metrics(predictions, labels) -> dict[str, float]:
    """Pearson and Spearman correlation and mean squared error; a constant prediction gives nan."""
    from scipy.stats import pearsonr, spearmanr

    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns nan: nan is the answer
        pearson = float(pearsonr(predictions, labels)[0]) if len(labels) > 1 else math.nan
        spearman = float(spearmanr(predictions, labels)[0]) if len(labels) > 1 else math.nan
    return {"pearson": pearson, "spearman": spearman, "mse": float(np.mean((predictions - labels) ** 2))}


# Metrics where a smaller value is better; every other metric reported here (accuracy, F1, MCC, Pearson,
# Spearman) is better when larger. The one place a metric's direction is decided (README, "Architecture").
LOWER_IS_BETTER = frozenset({"loss", "mse"})


def greater_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` (as a run names it: accuracy, pearson, loss, ...) is better."""
    return metric not in LOWER_IS_BETTER


def compute_metrics_for(task: str, is_regression: bool = False, num_labels: int | None = None):
    """A Trainer(compute_metrics=...) function for `task`, or None when eval_loss is the metric.

    Only "classification" has logits to score here; for "label_words" use score_label_words on the
    evaluation set, for "causal_lm" and "sft" the Trainer's eval_loss (perplexity = exp(loss)).
    """
    if task != "classification":
        return None

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, (tuple, list)):  # some models also return hidden states
            logits = logits[0]
        logits = np.asarray(logits)
        if is_regression:
            return regression_metrics(logits.reshape(-1), labels)
        return classification_metrics(logits.argmax(axis=-1), labels, num_labels or logits.shape[-1])

    return compute


def label_word_eval_for(word_ids: list[list[int]]):
    """(preprocess_logits_for_metrics, compute_metrics) scoring one-token label words inside the Trainer's
    own evaluation, so every periodic evaluation reports accuracy at no extra forward pass; None when a
    word takes several tokens or two words share their token (score_label_words then scores at the end).

    With one token per word, the logits just before it hold every word's score: the same argmax as
    label_word_logprobs.
    """
    import torch

    if any(len(w) != 1 for w in word_ids) or len({w[0] for w in word_ids}) != len(word_ids):
        return None
    words = torch.tensor([w[0] for w in word_ids])
    class_of = {w[0]: k for k, w in enumerate(word_ids)}

    def preprocess(logits, labels):
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.dim() == 2:  # logits at target rows only (target_logits.py): one row per example here
            if len(logits) != len(labels):
                raise RuntimeError(f"{len(logits)} target rows for {len(labels)} examples of one-token label words")
            return logits[:, words.to(logits.device)]
        before_word = labels.ne(-100).int().argmax(dim=1) - 1  # logits at t predict token t + 1
        return logits[torch.arange(len(labels), device=logits.device), before_word][:, words.to(logits.device)]

    def compute(eval_pred) -> dict[str, float]:
        scores, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
        word = labels[np.arange(len(labels)), (labels != -100).argmax(axis=1)]
        classes = np.array([class_of[int(t)] for t in word])
        return classification_metrics(scores.argmax(axis=-1), classes, len(word_ids))

    # The Trainer may compute logits at target positions only (speed/target_logits.py).
    return TargetRowsPreprocessor(preprocess), compute


def label_word_ids(tokenizer, label_words: list[str]) -> list[list[int]]:
    """Token ids of each label word as it reads after a prompt ending in ':' (with a leading space).

    Tokenised in context and cut after the prompt, because BPE/sentencepiece tokenise " word"
    differently standing alone than after text; training and scoring share these ids.
    """
    anchor = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    out = []
    for word in label_words:
        full = tokenizer("Answer: " + word, add_special_tokens=False)["input_ids"]
        ids = full[len(anchor):] if full[:len(anchor)] == anchor else \
            tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise LoraPlusError(f"label word '{word}' tokenises to nothing; choose another --label_words")
        out.append(list(ids))
    # Classes whose words share their tokens get the same score: the later one could never be predicted.
    # (A repeated word, an uncased tokenizer's "Yes" and "yes", two words both unknown to the vocabulary.)
    first_class = {}
    for k, ids in enumerate(out):
        j = first_class.setdefault(tuple(ids), k)
        if j != k:
            same = label_words[j] == label_words[k]
            clash = (f"label word '{label_words[k]}' is given twice" if same else
                     f"label words '{label_words[j]}' and '{label_words[k]}' tokenise to the same tokens {ids}")
            raise LoraPlusError(f"{clash}, so classes {j} and {k} cannot be told apart; choose a distinct "
                                f"--label_words entry per class")
    return out


def label_word_logprobs(model, tokenizer, dataset, label_words: list[str], batch_size: int = 16) -> np.ndarray:
    """(N, K) matrix: sum over word k's tokens of log p(token | prompt, earlier word tokens).

    dataset rows need "input_ids" and "prompt_length" (the prompt is input_ids[:prompt_length]),
    as made by data.prepare_label_words. Each prompt is scored with every word in one padded batch.
    """
    import torch

    words = label_word_ids(tokenizer, label_words)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts = [ids[:n] for ids, n in zip(dataset["input_ids"], dataset["prompt_length"])]
    scores = np.zeros((len(prompts), len(words)), dtype=np.float64)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            seqs = [p + w for p in chunk for w in words]
            width = max(len(s) for s in seqs)
            # Right padding: real tokens keep positions 0..L-1, so logits match an unpadded run.
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for i in range(len(seqs)):
                p_len, w = len(chunk[i // len(words)]), words[i % len(words)]
                # logits at position t predict token t+1.
                positions = torch.arange(p_len - 1, p_len - 1 + len(w))
                scores[start + i // len(words), i % len(words)] = \
                    logp[i, positions, torch.tensor(w)].sum().item()
    finally:
        model.train(was_training)
    return scores


def score_label_words(model, tokenizer, dataset, label_words: list[str], batch_size: int = 16) -> np.ndarray:
    """Predicted class per example: argmax_k of label_word_logprobs (the paper's MNLI-by-LM setup)."""
    return label_word_logprobs(model, tokenizer, dataset, label_words, batch_size).argmax(axis=1)
