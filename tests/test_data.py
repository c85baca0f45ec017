"""Dataset loading, task formatting, collators and metrics (packaged MiniLM tokenizer, tiny models)."""

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from loraplus.core.errors import LoraPlusError
from loraplus.train.data import (collator_for, prepare_causal_lm, prepare_classification, prepare_label_words,
                                 prepare_sft)
from loraplus.train.sources import _rotten_tomatoes_frame, load_splits
from loraplus.train.metrics import (
    classification_metrics,
    compute_metrics_for,
    label_word_eval_for,
    label_word_ids,
    label_word_logprobs,
    regression_metrics,
    score_label_words,
)
from loraplus.train.models import load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(resolve_model("minilm"))


def splits(train, validation=None):
    out = {"train": Dataset.from_list(train)}
    if validation is not None:
        out["validation"] = Dataset.from_list(validation)
    return DatasetDict(out)


def write_rows(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        path.write_text("text" + sep + "label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in rows))
    return path


ROWS = [{"text": f"review number {i}", "label": ["bad", "good"][i % 2]} for i in range(20)]


def test_rotten_tomatoes_counts():
    """The built-in data holds fresh 7,403 (label 1) and rotten 5,405 (label 0) snippets, no plots."""
    frame = _rotten_tomatoes_frame()
    assert (frame["label"] == 1).sum() == 7403 and (frame["label"] == 0).sum() == 5405


def test_rotten_tomatoes_split_is_fixed():
    """The built-in split is 80/10/10, disjoint, labelled negative/positive, and ignores the run seed."""
    a, b = load_splits(dataset_name="rotten_tomatoes", seed=1), load_splits(dataset_name="rotten_tomatoes", seed=2)
    assert {k: len(v) for k, v in a.items()} == {"train": 10248, "validation": 1280, "test": 1280}
    assert a["train"].features["label"].names == ["negative", "positive"]
    assert a["test"]["text"] == b["test"]["text"] and a["train"]["text"][:50] == b["train"]["text"][:50]
    assert sum(a["train"]["label"]) / len(a["train"]) == pytest.approx(7403 / 12808, abs=0.02)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_local_files_load_and_carve_validation(tmp_path, suffix):
    """A local csv/tsv/jsonl train file loads; a seeded validation split is carved from it."""
    path = write_rows(tmp_path / f"train{suffix}", ROWS)
    a = load_splits(train_file=str(path), validation_split_ratio=0.25, seed=3)
    b = load_splits(train_file=str(path), validation_split_ratio=0.25, seed=3)
    assert (len(a["train"]), len(a["validation"])) == (15, 5)
    assert a["validation"]["text"] == b["validation"]["text"]
    assert set(a["train"]["text"]).isdisjoint(a["validation"]["text"])


def test_folder_with_dev_file(tmp_path):
    """A dataset folder with train.jsonl and dev.jsonl gives train and validation from those files."""
    write_rows(tmp_path / "train.jsonl", ROWS)
    write_rows(tmp_path / "dev.jsonl", ROWS[:4])
    out = load_splits(dataset_name=str(tmp_path), max_train_samples=7)
    assert (len(out["train"]), len(out["validation"])) == (7, 4) and "test" not in out


@pytest.mark.parametrize("case, needle", [("missing", "does not exist"), ("extension", ".parquet"),
                                          ("empty", "no examples"), ("hub", "offline")])
def test_load_errors_are_one_line(tmp_path, case, needle):
    """Missing file, unsupported extension, empty split and an offline hub name are one-line LoraPlusErrors."""
    kwargs = {"missing": {"train_file": str(tmp_path / "nope.csv")},
              "extension": {"train_file": str((tmp_path / "data.xml").resolve())},
              "empty": {"train_file": str(tmp_path / "train.csv")},
              "hub": {"dataset_name": "no-such-dataset-xyz"}}[case]
    (tmp_path / "data.xml").write_text("<a/>")
    (tmp_path / "train.csv").write_text("text,label\n")
    start = time.time()
    with pytest.raises(LoraPlusError) as err:
        load_splits(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value) and time.time() - start < 10


def test_string_labels_map_to_sorted_ids(tok):
    """String labels become ids of their sorted names; no padding is applied."""
    data = splits([{"t": "b one", "y": "pos"}, {"t": "a longer text here", "y": "neg"}], [{"t": "c", "y": "pos"}])
    out, names, is_regression = prepare_classification(data, tok, text_column="t", label_column="y", max_length=16)
    assert names == ["neg", "pos"] and not is_regression
    assert out["train"]["labels"] == [1, 0] and out["validation"]["labels"] == [1]
    assert len(out["train"][0]["input_ids"]) < len(out["train"][1]["input_ids"])


def test_unseen_validation_label_is_error(tok):
    """A validation label absent from train is a one-line LoraPlusError naming it."""
    data = splits([{"text": "a", "label": "pos"}], [{"text": "b", "label": "maybe"}])
    with pytest.raises(LoraPlusError, match="'maybe'"):
        prepare_classification(data, tok, text_column="text", label_column="label", max_length=8)


def test_missing_column_lists_columns(tok):
    """A missing text column is a LoraPlusError listing the columns present."""
    data = splits([{"sentence": "a", "label": 0}])
    with pytest.raises(LoraPlusError, match="columns: sentence, label"):
        prepare_classification(data, tok, text_column="text", label_column="label", max_length=8)


def test_float_labels_are_regression(tok):
    """Non-integer float labels give a regression task with float targets and no label names."""
    data = splits([{"text": "a", "score": 0.5}, {"text": "b", "score": 3.25}])
    out, names, is_regression = prepare_classification(data, tok, text_column="text", label_column="score",
                                                        max_length=8)
    assert is_regression and names is None and out["train"]["labels"] == [0.5, 3.25]


def test_integer_labels_out_of_range_is_error(tok):
    """Integer labels are classes 0..K-1 of train; a larger one in validation is a LoraPlusError."""
    data = splits([{"text": "a", "label": 0}, {"text": "b", "label": 1}], [{"text": "c", "label": 2}])
    with pytest.raises(LoraPlusError, match="outside 0..1"):
        prepare_classification(data, tok, text_column="text", label_column="label", max_length=8)


def test_text_pair_is_encoded_with_both_segments(tok):
    """text_pair_column feeds the second sentence (BERT token_type_ids 1 on it)."""
    data = splits([{"a": "first", "b": "second", "label": 0}, {"a": "third", "b": "fourth", "label": 1}])
    out, _, _ = prepare_classification(data, tok, text_column="a", text_pair_column="b", label_column="label",
                                       max_length=16)
    assert 1 in out["train"][0]["token_type_ids"]


def test_causal_lm_labels_equal_inputs(tok):
    """causal_lm labels are the input ids, truncated to max_length."""
    out = prepare_causal_lm(splits([{"text": "one two three four five six"}]), tok, text_column="text", max_length=5)
    row = out["train"][0]
    assert row["labels"] == row["input_ids"] and len(row["input_ids"]) == 5


def test_sft_masks_prompt_tokens(tok):
    """sft (no chat template): prompt tokens are labelled -100, response tokens keep their ids."""
    data = splits([{"prompt": "what is red", "response": "a colour"}])
    row = prepare_sft(data, tok, prompt_column="prompt", response_column="response", messages_column="messages",
                      max_length=32)["train"][0]
    learned = [i for i, y in zip(row["input_ids"], row["labels"]) if y != -100]
    assert tok.decode(learned) == "a colour"
    assert all(y in (-100, i) for i, y in zip(row["input_ids"], row["labels"]))


def test_sft_messages_learn_assistant_turns_only(tok):
    """sft with messages and a chat template: only assistant turns carry labels."""
    chat = tok.__class__.from_pretrained(resolve_model("minilm"))
    chat.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
                          "{% if add_generation_prompt %}assistant : {% endif %}")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]
    row = prepare_sft(splits([{"messages": msgs}]), chat, prompt_column="prompt", response_column="response",
                      messages_column="messages", max_length=64)["train"][0]
    assert chat.decode([y for y in row["labels"] if y != -100]) == "hello there. see you."


def test_label_words_loss_on_word_only(tok):
    """label_words: labels cover exactly the label word's tokens after prompt_length; class ids kept."""
    data = splits([{"text": "great film", "label": "positive"}, {"text": "dull", "label": "negative"}])
    out, names, words = prepare_label_words(data, tok, text_column="text", text_pair_column=None,
                                            label_column="label", label_words=["bad", "very good"],
                                            prompt_template=None, max_length=32)
    row = out["train"][0]
    assert names == ["negative", "positive"] and row["label"] == 1
    assert row["labels"][:row["prompt_length"]] == [-100] * row["prompt_length"]
    assert row["labels"][row["prompt_length"]:] == label_word_ids(tok, words)[1]


class FavourToken(torch.nn.Module):
    """A 'language model' whose next-token distribution always favours one token id."""

    def __init__(self, vocab, token):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():
            self.bias[token] = 5.0

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def test_scorer_picks_most_likely_word(tok):
    """score_label_words predicts the class whose word the model makes most likely."""
    data = splits([{"text": "x", "label": 0}, {"text": "y", "label": 1}, {"text": "z", "label": 0}])
    out, _, words = prepare_label_words(data, tok, text_column="text", text_pair_column=None, label_column="label",
                                        label_words=["bad", "good"], prompt_template=None, max_length=16)
    for cls in (0, 1):
        model = FavourToken(len(tok), label_word_ids(tok, words)[cls][0])
        assert score_label_words(model, tok, out["train"], words, batch_size=2).tolist() == [cls] * 3


def test_scorer_matches_manual_log_probs(tok):
    """Batched, padded label-word log-probs equal a one-sequence-at-a-time computation on a tiny Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=tok.pad_token_id))
    data = splits([{"text": "short", "label": 0}, {"text": "a much longer review text", "label": 1}])
    out, _, words = prepare_label_words(data, tok, text_column="text", text_pair_column=None, label_column="label",
                                        label_words=["no", "not at all"], prompt_template=None, max_length=32)
    scores = label_word_logprobs(model, tok, out["train"], words, batch_size=2)
    for n, row in enumerate(out["train"]):
        prompt = row["input_ids"][:row["prompt_length"]]
        for k, w in enumerate(label_word_ids(tok, words)):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([prompt + w])).logits[0], -1)
            manual = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(w))
            assert scores[n, k] == pytest.approx(manual, abs=1e-4)


def test_label_words_scored_inside_evaluation_predict_as_the_scorer(tok):
    """One-token words: the Trainer-evaluation scores (logits before the word) give score_label_words' argmax."""
    from transformers import EvalPrediction, LlamaConfig, LlamaForCausalLM


    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=tok.pad_token_id))
    rows = [{"text": t, "label": k % 2} for k, t in enumerate(["short", "a much longer review text", "ok", "fine x"])]
    out, _, words = prepare_label_words(splits(rows), tok, text_column="text", text_pair_column=None,
                                        label_column="label", label_words=["bad", "good"], prompt_template=None,
                                        max_length=32)
    preprocess, compute = label_word_eval_for(label_word_ids(tok, words))
    batch = collator_for("label_words", tok)([out["train"][i] for i in range(len(rows))])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scores = preprocess(logits, batch["labels"])
    expected = score_label_words(model, tok, out["train"], words, batch_size=4)
    assert scores.argmax(dim=-1).tolist() == expected.tolist()
    metrics = compute(EvalPrediction(predictions=scores.numpy(), label_ids=batch["labels"].numpy()))
    assert metrics["accuracy"] == pytest.approx(np.mean(expected == np.array([r["label"] for r in rows])))


def test_words_of_several_tokens_are_not_scored_inside_evaluation():
    assert label_word_eval_for([[5], [6, 7]]) is None and label_word_eval_for([[5], [5]]) is None


def test_lm_collator_pads_labels_and_drops_extras(tok):
    """The causal-LM collator pads labels with -100 and drops label/prompt_length fields."""
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "label": 1,
                 "prompt_length": 1}, {"input_ids": [5], "attention_mask": [1], "labels": [5], "label": 0,
                                       "prompt_length": 0}]
    batch = collator_for("label_words", tok)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["labels"][1].tolist() == [5, -100, -100] and batch["attention_mask"][1].tolist() == [1, 0, 0]


def test_classification_metrics_known_values():
    """Accuracy, binary F1 and MCC match hand-computed values on a 4-example case."""
    m = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], num_labels=2)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8) and m["mcc"] == pytest.approx(1 / np.sqrt(3))


def test_compute_metrics_for_regression():
    """compute_metrics_for regression correlates squeezed predictions with labels."""
    fn = compute_metrics_for("classification", is_regression=True, num_labels=1)
    out = fn(SimpleNamespace(predictions=np.array([[0.1], [0.5], [0.9]]), label_ids=np.array([1.0, 2.0, 3.0])))
    assert out["pearson"] == pytest.approx(1.0) and out == {**regression_metrics([0.1, 0.5, 0.9], [1, 2, 3])}


def test_unlabeled_test_split_is_dropped(tok):
    """A test split whose labels are all -1 (GLUE on the hub) is dropped, not an error."""
    data = splits([{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    data["test"] = Dataset.from_list([{"text": "c", "label": -1}])
    out, names, _ = prepare_classification(data, tok, text_column="text", label_column="label", max_length=8)
    assert set(out) == {"train"} and names == ["0", "1"]


# Labels: the classes are the values that occur, whatever those values are.

@pytest.mark.parametrize("values", [[1, 5, 5, 1], [10, -1, 3, 3], [1.0, 5.0, 2.0], [True, False]])
def test_whole_number_labels_are_the_distinct_values_seen(tok, values):
    """K distinct whole-number labels make K classes, ids 0..K-1 in sorted order, named by value."""
    data = splits([{"text": f"t{i}", "label": v} for i, v in enumerate(values)])
    out, names, is_regression = prepare_classification(data, tok, text_column="text", label_column="label",
                                                        max_length=8)
    classes = sorted({int(v) for v in values})
    assert not is_regression and names == [str(c) for c in classes]
    assert out["train"]["labels"] == [classes.index(int(v)) for v in values]


def test_run_with_value_named_classes_maps_labels_by_value(tok):
    """Scoring a run trained on ratings 1 and 5: label 5 is class "5" (id 1), and 3 is refused."""
    data = splits([{"text": "a", "label": 5}, {"text": "b", "label": 1}])
    out, names, _ = prepare_classification(data, tok, text_column="text", label_column="label", max_length=8,
                                           label_names=["1", "5"])
    assert names == ["1", "5"] and out["train"]["labels"] == [1, 0]
    with pytest.raises(LoraPlusError, match="not one of the run's classes"):
        prepare_classification(splits([{"text": "c", "label": 3}]), tok, text_column="text", label_column="label",
                               max_length=8, label_names=["1", "5"])


@pytest.mark.parametrize("train", [
    [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}],
    [{"text": "a", "label": 4}, {"text": "b", "label": 4}],
    [{"text": "a", "label": 1.0}, {"text": "b", "label": 1.0}],
])
def test_single_class_train_is_refused(tok, train):
    """A train split with one class only is a one-line error, for classification and label words."""
    with pytest.raises(LoraPlusError, match="one class only") as err:
        prepare_classification(splits(train), tok, text_column="text", label_column="label", max_length=8)
    assert "\n" not in str(err.value)
    with pytest.raises(LoraPlusError, match="one class only"):
        prepare_label_words(splits(train), tok, text_column="text", label_column="label", max_length=32,
                            label_words=None)


def test_single_class_of_a_class_label_train_is_refused(tok):
    """A ClassLabel column with two names but one class present in train is refused too."""
    from datasets import ClassLabel, Features, Value

    train = Dataset.from_list([{"text": "a", "label": 1}, {"text": "b", "label": 1}],
                              features=Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))
    with pytest.raises(LoraPlusError, match="label 'pos'"):
        prepare_classification(DatasetDict({"train": train}), tok, text_column="text", label_column="label",
                               max_length=8)


@pytest.mark.parametrize("words, needle", [(["yes", "yes"], "given twice"), (["Yes", "yes"], "same tokens"),
                                           (["good", "bad", " good"], "same tokens")])
def test_label_words_that_classes_share_are_refused(tok, words, needle):
    """Two classes whose words tokenise alike (the same word, or words the uncased MiniLM merges) are refused."""
    data = splits([{"text": f"t{i}", "label": ["a", "b", "c"][i % len(words)]} for i in range(6)])
    with pytest.raises(LoraPlusError, match=needle):
        prepare_label_words(data, tok, text_column="text", label_column="label", max_length=32, label_words=words)


# SFT: the formats users already have, read from their columns.

CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] in ['user', 'assistant', 'system'] %}"
                 "{{ m['role'] }} : {{ m['content'] }} . {% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")


@pytest.fixture(scope="module")
def chat_tok():
    chat = load_tokenizer(resolve_model("minilm"))
    chat.chat_template = CHAT_TEMPLATE  # renders only the roles it knows, as many templates do
    return chat


def sft_rows(data, tokenizer):
    out = prepare_sft(splits(data), tokenizer, max_length=64)["train"]
    return [(r["input_ids"], r["labels"]) for r in out]


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "sharegpt_in_messages", "alpaca", "prompt_completion"])
def test_sft_formats_tokenise_like_prompt_response(chat_tok, fmt):
    """Each supported format of the same exchanges gives the tokens and labels of prompt/response columns."""
    pairs = [("what is red", "a colour"), ("name a fruit\n\napples or pears", "a pear")]
    expected = sft_rows([{"prompt": p, "response": r} for p, r in pairs], chat_tok)
    data = {
        "messages": [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
                     for p, r in pairs],
        "sharegpt": [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": r}]}
                     for p, r in pairs],
        "sharegpt_in_messages": [{"messages": [{"from": "human", "value": p}, {"from": "gpt", "value": r}]}
                                 for p, r in pairs],
        "alpaca": [{"instruction": "what is red", "input": "", "output": "a colour"},
                   {"instruction": "name a fruit", "input": "apples or pears", "output": "a pear"}],
        "prompt_completion": [{"prompt": p, "completion": r} for p, r in pairs],
    }[fmt]
    assert sft_rows(data, chat_tok) == expected
    assert all(any(y != -100 for y in labels) for _, labels in expected)


def test_sharegpt_system_turn_is_kept_and_not_learned(chat_tok):
    """ShareGPT's system turn is rendered as system and carries no labels."""
    data = [{"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"},
                               {"from": "gpt", "value": "hello"}]}]
    (ids, labels), = sft_rows(data, chat_tok)
    assert "system : be brief" in chat_tok.decode(ids)
    assert chat_tok.decode([y for y in labels if y != -100]) == "hello."


@pytest.mark.parametrize("data, needle", [
    ([{"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "again"}]}],
     "no assistant turn"),
    ([{"messages": [{"role": "narrator", "content": "night falls"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}]}], "role 'narrator'"),
    ([{"messages": [{"speaker": "user", "text": "hi"}]}], "no role"),
    ([{"prompt": "hi", "response": "  "}], "empty response"),
    ([{"question": "hi", "answer": "hello"}], "instruction/input/output"),
])
def test_sft_data_that_would_learn_nothing_or_lose_turns_is_refused(chat_tok, data, needle):
    """No assistant turn, a role the template drops, turns without roles, empty responses, unknown columns."""
    with pytest.raises(LoraPlusError, match=needle) as err:
        prepare_sft(splits(data), chat_tok, max_length=64)
    assert "\n" not in str(err.value) and "truncation" not in str(err.value)


# Plain text for causal_lm.

def test_txt_file_is_one_document_per_line(tmp_path):
    """A .txt train file gives one example per non-blank line, in column text; other tasks refuse it."""
    path = tmp_path / "train.txt"
    path.write_text("first document\n\nsecond one\r\n   \nthird\n")
    out = load_splits(train_file=str(path), validation_file=str(path))
    assert out["train"]["text"] == ["first document", "second one", "third"]
    assert load_splits(dataset_name=str(tmp_path), validation_split_ratio=0.34)["train"].column_names == ["text"]
    with pytest.raises(LoraPlusError, match="causal_lm only"):
        load_splits(train_file=str(path), text_files=False)
