"""Every command reads its flags the same way: HfArgumentParser over a dataclass, one coercion shared with YAML,
`--output_dir` for its output folder, and one-line errors naming the nearest flag."""

import dataclasses

import pytest
from transformers import HfArgumentParser

from loraplus.cli import MergeArguments, main
from loraplus.experiments.compare import CompareFlags, SweepArguments
from loraplus.experiments.demo import DemoArguments
from loraplus.experiments.diagnose import DiagnoseArguments
from loraplus.experiments.toy import LinearToyArguments
from loraplus.experiments.toy_paper import PaperToyArguments
from loraplus.experiments.tune import TuneArguments
from loraplus.train.config import CONFIG_GROUPS, TrainConfig, _config_parser, parse_train_args

from test_config import one_line_error, write

COMMAND_ARGUMENTS = [DemoArguments, CompareFlags, SweepArguments, TuneArguments, LinearToyArguments,
                     PaperToyArguments, DiagnoseArguments, MergeArguments]


def test_train_flags_are_hf_argument_parser_options_of_every_config_field():
    """`loraplus train`'s flags are HfArgumentParser's options of TrainConfig's fields, one help group per
    field group: nothing is parsed outside the dataclass declaration."""
    parser = _config_parser()
    assert isinstance(parser, HfArgumentParser)
    assert set(parser.names()) == {f.name for f in dataclasses.fields(TrainConfig)}
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    for group in CONFIG_GROUPS:
        assert groups[group._argument_group_name] == {f.name for f in dataclasses.fields(group)}


def test_a_bool_that_defaults_true_has_hf_argument_parsers_no_flag():
    """HfArgumentParser's `--no_X` complement turns a true-by-default bool off, like `--X false`."""
    assert parse_train_args(["--no_packed_sequences"]).packed_sequences is False
    assert parse_train_args(["--no-fast-cpu-dropout"]).fast_cpu_dropout is False
    assert parse_train_args(["--packed_sequences", "false"]).packed_sequences is False


def test_a_list_flag_takes_one_token_and_leaves_the_config_path(tmp_path):
    """A list flag reads one comma-separated token, so a config path after it is still the config file."""
    cfg = parse_train_args(["--report_to", "none", write(tmp_path, "lora_r: 4\n")])
    assert cfg.report_to == ["none"] and cfg.lora_r == 4
    cfg = parse_train_args(["--lora_target_modules", "query,value", write(tmp_path, "lora_r: 2\n")])
    assert cfg.lora_target_modules == ["query", "value"] and cfg.lora_r == 2


def test_a_wrong_value_says_the_same_from_a_flag_and_from_yaml(tmp_path):
    """One coercion serves flags and YAML: the same wrong value is refused with the same words."""
    from_flag = one_line_error(parse_train_args, ["--lora_r", "1.5"])
    from_yaml = one_line_error(parse_train_args, [write(tmp_path, "lora_r: '1.5'\n")])
    assert from_flag == from_yaml
    assert from_flag.startswith("lora_r takes a whole number (int), got '1.5'")


@pytest.mark.parametrize("arguments", COMMAND_ARGUMENTS, ids=lambda c: c.__name__)
def test_every_command_names_its_output_folder_output_dir(arguments):
    """Each command that writes takes its output folder as --output_dir (train's own key of the same name)."""
    assert "output_dir" in {f.name for f in dataclasses.fields(arguments)}


@pytest.mark.parametrize("argv, nearest", [
    (["train", "--lerning_rate", "1e-3"], "learning_rate"),
    (["demo", "--max_step", "3"], "max_steps"),
    (["toy", "--width", "128"], "widths"),
    (["toy", "--model", "linear", "--log2_lr_mx", "0"], "log2_lr_max"),
    (["diagnose", "run", "--output_di", "plots"], "output_dir"),
    (["merge", "run", "--output-dri", "out"], "output_dir"),
    (["tune", "--budgett", "10"], "budget"),
    (["compare", "--method", "lora"], "methods"),
    (["compare", "--lrs_lorra", "1e-3"], "lrs_lora"),
    (["sweep", "--ratios", "1,4"], "ratio"),
])
def test_an_unknown_flag_exits_2_naming_the_nearest_for_every_command(argv, nearest, capsys, tmp_path,
                                                                       monkeypatch):
    """A mistyped flag of any command: exit 2, one line, the nearest flag named, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"did you mean '{nearest}'" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, flag", [
    (["demo", "--max_steps", "ten"], "--max_steps"),
    (["tune", "--eta", "1.5"], "--eta"),
    (["compare", "--seeds", "1,x"], "--seeds"),
    (["sweep", "--lr", "fast"], "--lr"),
    (["toy", "--seeds", ""], "--seeds"),
])
def test_a_bad_command_flag_value_exits_2_naming_the_flag_and_its_form(argv, flag, capsys, tmp_path, monkeypatch):
    """A command's own flag with a value of the wrong type: exit 2, one line naming the flag and what it takes."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} takes " in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, arguments", [
    ("demo", DemoArguments), ("merge", MergeArguments), ("compare", CompareFlags), ("sweep", SweepArguments),
    ("tune", TuneArguments), ("diagnose", DiagnoseArguments),
])
def test_help_lists_every_flag_of_the_command(command, arguments, capsys):
    """`loraplus <command> --help` lists each flag the command's dataclass declares, read from it."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"--{f.name} " in out for f in dataclasses.fields(arguments))
