"""Tests for loraplus.train.config: defaults, YAML + flag parsing, coercion, validation errors, round trips."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from loraplus.train.config import TASKS, TrainConfig, parse_train_args, train_help, training_arguments_kwargs
from loraplus.core.errors import LoraPlusError


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_line_error(fn, *args):
    """Run fn(*args), expect a LoraPlusError, and return its message after checking it is one line."""
    with pytest.raises(LoraPlusError) as info:
        fn(*args)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_defaults_are_valid():
    """The default config validates, and parsing no arguments gives exactly the defaults, the output folder
    as an absolute path (a run's config.yaml must work from any folder)."""
    TrainConfig().validate()
    assert parse_train_args([]) == dataclasses.replace(TrainConfig(), output_dir=os.path.abspath("loraplus-output"))


def test_local_paths_are_stored_absolute_and_names_are_not(tmp_path, monkeypatch):
    """Relative data files, output folder and model folder become absolute; an alias, a hub id and a built-in
    dataset stay names, even when a folder of that name exists here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    (tmp_path / "minilm").mkdir()
    cfg = parse_train_args(["--model_name_or_path", "my-model", "--train_file", "data/train.csv", "--test_file",
                            "~/test.csv", "--output_dir", "out"])
    assert cfg.model_name_or_path == str(tmp_path / "my-model") and cfg.train_file == str(tmp_path / "data/train.csv")
    assert cfg.test_file == os.path.expanduser("~/test.csv") and cfg.output_dir == str(tmp_path / "out")
    assert parse_train_args(["--model_name_or_path", "minilm"]).model_name_or_path == "minilm"
    assert parse_train_args(["--model_name_or_path", "org/model"]).model_name_or_path == "org/model"
    assert parse_train_args([]).dataset_name == "rotten_tomatoes"


def test_import_loads_no_heavy_library():
    """Importing loraplus.train.config loads neither torch, transformers nor peft (validation precedes model load)."""
    code = "import sys, loraplus.train.config; print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_flags_override_yaml(tmp_path):
    """A --key flag overrides the same key from the YAML file; other YAML keys are kept."""
    path = write(tmp_path, "learning_rate: 0.01\nlora_r: 4\n")
    cfg = parse_train_args([path, "--learning_rate", "1e-3"])
    assert (cfg.learning_rate, cfg.lora_r) == (1e-3, 4)


def test_float_from_exponent_strings(tmp_path):
    """'1e-3' becomes the float 0.001 from a flag and from YAML (which reads 1e-3 as a string)."""
    assert parse_train_args(["--learning_rate", "1e-3"]).learning_rate == 1e-3
    assert parse_train_args([write(tmp_path, "learning_rate: 1e-3\n")]).learning_rate == 1e-3


def test_comma_separated_list():
    """A comma-separated flag becomes a list of stripped strings."""
    assert parse_train_args(["--lora_target_modules", "query, value"]).lora_target_modules == ["query", "value"]


def test_all_linear_stays_a_string():
    """lora_target_modules all-linear is kept as the bare string PEFT expects; one name becomes a list."""
    assert parse_train_args(["--lora_target_modules", "all-linear"]).lora_target_modules == "all-linear"
    assert TrainConfig.from_dict({"lora_target_modules": ["all-linear"]}).lora_target_modules == "all-linear"
    assert parse_train_args(["--lora_target_modules", "query"]).lora_target_modules == ["query"]


def test_bool_flag_without_value_means_true(tmp_path):
    """A bool flag alone is true, even before a positional path; an explicit bool word is honoured."""
    path = write(tmp_path, "lora_r: 4\n")
    cfg = parse_train_args(["--use_dora", path, "--overwrite_output_dir"])
    assert cfg.use_dora and cfg.overwrite_output_dir and cfg.lora_r == 4
    assert parse_train_args(["--group_by_length", "false"]).group_by_length is False


def test_none_word_gives_none():
    """'none' / 'null' set an optional field to None."""
    cfg = parse_train_args(["--dataset_name", "none", "--max_train_samples", "null"])
    assert cfg.dataset_name is None and cfg.max_train_samples is None


def test_equals_form_and_hyphens():
    """--key=value and hyphenated flag names work like --key value."""
    cfg = parse_train_args(["--learning-rate=0.5", "--lora-r", "4", "--max_steps", "-1"])
    assert (cfg.learning_rate, cfg.lora_r, cfg.max_steps) == (0.5, 4, -1)


def test_int_rejects_fraction():
    """An int field rejects '1.5' with a message naming the key and the expected type."""
    message = one_line_error(parse_train_args, ["--lora_r", "1.5"])
    assert "lora_r" in message and "int" in message and "1.5" in message


def test_yaml_bool_into_str_field(tmp_path):
    """YAML `bf16: true` (a bool) becomes the string 'true' of the auto/true/false field."""
    assert parse_train_args([write(tmp_path, "bf16: true\n")]).bf16 == "true"


def test_unknown_key_suggests_nearest(tmp_path):
    """An unknown key names the nearest known key and points at --help, from a flag and from YAML."""
    message = one_line_error(parse_train_args, ["--learning_rat", "1e-3"])
    assert "'learning_rat'" in message and "did you mean 'learning_rate'" in message and "--help" in message
    message = one_line_error(parse_train_args, [write(tmp_path, "lora_rr: 4\n")])
    assert "did you mean 'lora_r'" in message


def test_unknown_key_suggests_training_arguments_field():
    """The suggestion also covers TrainingArguments fields."""
    assert "did you mean 'adam_beta2'" in one_line_error(parse_train_args, ["--adam_beta", "0.9"])


@pytest.mark.parametrize("argv", [
    ["--lora_r"],
    ["--lora_r", "--use_dora"],
    ["--learning_rate", "fast"],
    ["--use_dora=maybe"],
    ["--learning_rate", "0"],
    ["--loraplus_lr_ratio", "0"],
    ["--loraplus_lr_embedding", "-1e-4"],
    ["--loraplus_lr_other", "0"],
    ["--lora_r", "0"],
    ["--lora_dropout", "1.0"],
    ["--lora_dropout", "-0.1"],
    ["--per_device_train_batch_size", "0"],
    ["--per_device_eval_batch_size", "0"],
    ["--gradient_accumulation_steps", "0"],
    ["--num_train_epochs", "0"],
    ["--warmup_ratio", "1.0"],
    ["--validation_split_ratio", "0"],
    ["--validation_split_ratio", "1"],
    ["--bf16", "maybe"],
    ["--save_steps", "100"],
    ["--eval_steps", "30", "--save_steps", "100"],
    ["--lora_target_modules", "query,all-linear"],
    ["--label_words", "great"],
    ["--label_words", "yes,no,yes"],
    ["--label_words", "yes, yes"],
    ["--max_steps", "0"],
    ["--max_steps", "-2"],
    ["a.yaml", "b.yaml"],
    ["-x"],
    ["--adam_beta2", "high"],
])
def test_invalid_arguments_raise_one_line(argv):
    """Each user error in argv raises LoraPlusError with a one-line message."""
    one_line_error(parse_train_args, argv)


def test_unknown_task_lists_valid_ones():
    """An unknown task names every valid task."""
    message = one_line_error(parse_train_args, ["--task", "regression"])
    assert all(task in message for task in TASKS)


def test_missing_yaml_file(tmp_path):
    """A config path that does not exist is a one-line error naming the path."""
    assert "nope.yaml" in one_line_error(parse_train_args, [str(tmp_path / "nope.yaml")])


def test_bad_yaml_names_file_and_line(tmp_path):
    """YAML that does not parse is a one-line error naming the file and the line."""
    path = write(tmp_path, "lora_r: 4\nlearning_rate: [1e-3\nseed: 1\n")
    message = one_line_error(parse_train_args, [path])
    assert path in message and "line " in message


def test_yaml_top_level_must_be_mapping(tmp_path):
    """A YAML file whose top level is a list is a one-line error."""
    assert "mapping" in one_line_error(parse_train_args, [write(tmp_path, "- lora_r\n- 4\n")])


def test_label_words_task_without_words_is_valid():
    """task label_words without label_words is allowed (later code derives them from label names)."""
    assert parse_train_args(["--task", "label_words"]).label_words is None


def test_epochs_may_be_zero_with_max_steps():
    """num_train_epochs 0 is fine when max_steps > 0 sets the budget."""
    assert parse_train_args(["--num_train_epochs", "0", "--max_steps", "10"]).max_steps == 10


def test_programmatic_config_is_type_checked():
    """validate() rejects a wrong type set from Python, not only from the parser."""
    one_line_error(TrainConfig(learning_rate="1e-3").validate)
    one_line_error(TrainConfig(lora_r=8.5).validate)


def test_round_trip_dict():
    """from_dict(to_dict()) gives an equal config, and to_dict is JSON-serialisable."""
    cfg = parse_train_args(["--lora_target_modules", "query,value", "--use_dora", "--adam_beta2", "0.98",
                            "--label_words", "bad,good", "--eval_steps", "50"])
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == cfg


def test_round_trip_yaml_file(tmp_path):
    """save() then load() gives an equal config."""
    cfg = parse_train_args(["--lora_target_modules", "all-linear", "--max_grad_norm", "0.5", "--seed", "7"])
    path = str(tmp_path / "out" / "config.yaml")
    cfg.save(path)
    assert TrainConfig.load(path) == cfg
    assert parse_train_args([path]) == cfg


def test_training_argument_passes_through(tmp_path):
    """--adam_beta2 0.98 lands in trainer_args as a float and in the TrainingArguments built from the config."""
    from transformers import TrainingArguments

    cfg = parse_train_args(["--adam_beta2", "0.98", "--output_dir", str(tmp_path)])
    assert cfg.trainer_args == {"adam_beta2": 0.98} and isinstance(cfg.trainer_args["adam_beta2"], float)
    assert TrainingArguments(**training_arguments_kwargs(cfg)).adam_beta2 == 0.98


def test_nested_trainer_args_and_flag_override(tmp_path):
    """YAML trainer_args entries are type-checked, and a flag for the same key overrides them."""
    path = write(tmp_path, "trainer_args:\n  adam_beta2: 0.9\n  max_grad_norm: 0.5\n")
    assert parse_train_args([path, "--adam_beta2", "0.98"]).trainer_args == {"adam_beta2": 0.98,
                                                                             "max_grad_norm": 0.5}
    one_line_error(parse_train_args, [write(tmp_path, "trainer_args:\n  learning_rate: 0.1\n", "b.yaml")])


def test_kwargs_build_training_arguments(tmp_path):
    """training_arguments_kwargs constructs TrainingArguments with the config's HF-named values."""
    from transformers import TrainingArguments

    cfg = parse_train_args(["--output_dir", str(tmp_path), "--learning_rate", "3e-4", "--seed", "3"])
    kw = training_arguments_kwargs(cfg)
    assert not any(k.startswith(("lora", "loraplus")) or k in ("task", "dataset_name") for k in kw)
    args = TrainingArguments(**kw)
    assert (args.learning_rate, args.seed) == (3e-4, 3)
    # the Trainer gets the whole batch; its micro-batches are cut inside each step (loraplus/speed/sampling.py)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 1)


def test_warmup_ratio_maps_to_warmup_steps(tmp_path):
    """warmup_ratio is passed as the fractional warmup_steps that transformers 5 reads as a ratio."""
    cfg = parse_train_args(["--output_dir", str(tmp_path), "--warmup_ratio", "0.1"])
    kw = training_arguments_kwargs(cfg)
    assert kw["warmup_steps"] == 0.1 and "warmup_ratio" not in kw


@pytest.mark.parametrize("argv, strategy", [([], "epoch"), (["--eval_steps", "50", "--save_steps", "100"], "steps")])
def test_save_follows_eval(tmp_path, argv, strategy):
    """Saving follows the evaluation schedule, so load_best_model_at_end is accepted by TrainingArguments."""
    from transformers import TrainingArguments

    kw = training_arguments_kwargs(parse_train_args([*argv, "--output_dir", str(tmp_path)]))
    assert kw["eval_strategy"] == kw["save_strategy"] == strategy
    TrainingArguments(**kw, load_best_model_at_end=True)


def test_unknown_scheduler_is_one_line_error(tmp_path):
    """An lr_scheduler_type transformers does not know is a one-line error listing the valid ones."""
    cfg = parse_train_args(["--output_dir", str(tmp_path), "--lr_scheduler_type", "cosin"])
    assert "cosine" in one_line_error(training_arguments_kwargs, cfg)


def test_help_lists_every_field():
    """train --help names every TrainConfig key and says TrainingArguments fields are accepted."""
    text = train_help()
    assert all(f"--{f.name} " in text for f in dataclasses.fields(TrainConfig))
    assert "TrainingArguments" in text


@pytest.mark.parametrize("steps", [-1, 1, 500])
def test_max_steps_is_minus_one_or_positive(steps):
    """-1 (train num_train_epochs) and any positive step count are valid max_steps."""
    TrainConfig(max_steps=steps).validate()


def test_repeated_label_word_is_named():
    """A label word given twice is refused, naming it."""
    assert "'yes' is given twice" in one_line_error(parse_train_args, ["--label_words", "yes,no,yes"])


def test_a_renamed_key_reads_as_its_new_name():
    """`lora_optimizer` (older configs and run folders) is `loraplus_optimizer`: set by it, and unchanged when
    an old run's config is compared with a new one."""
    from loraplus.train.config import changed_settings

    cfg = TrainConfig.from_dict({"lora_optimizer": "riemannian", "loraplus_lr_ratio": 1.0})
    assert cfg.loraplus_optimizer == "riemannian"
    old_run = {k: v for k, v in cfg.to_dict().items() if k != "loraplus_optimizer"} | {"lora_optimizer": "riemannian"}
    assert changed_settings(old_run, cfg) == []
    assert [k for k, _, _ in changed_settings(old_run | {"lora_optimizer": "lorafa"}, cfg)] == ["loraplus_optimizer"]
