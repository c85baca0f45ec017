"""`loraplus` command line: parse, call, print. Errors a user can cause exit 2 with one line."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import warnings

from loraplus.core.errors import LoraPlusError

USAGE = """usage: loraplus <command> [args]

commands:
  train [CONFIG.yaml] [--key value ...]   finetune with LoRA+ (train --help lists every key)
  eval RUN_DIR [--key value ...]          score a trained adapter (default: the run's test split)
  merge RUN_DIR OUT_DIR                   write base + adapter merged into one model folder (OUT_DIR may
                                          also be given as --output_dir OUT_DIR)
  demo [--output_dir D] [--max_steps N]   offline: LoRA vs LoRA+ on MiniLM + Rotten Tomatoes
  compare CONFIG [--methods lora,loraplus,...] [--seeds 1,2] [--lrs ...] [--lrs_METHOD ...] [--ratios 16]
                                          each method at its own tuned lr, then per seed: report, curves;
                                          methods: lora loraplus loraplus_init2 riemannian lorafa rslora dora
  sweep CONFIG --lr 1e-4,3e-4 [--ratio 1,4,16] [--key value ...]
                                          one run per (lr_A, ratio): heatmap over (lr_A, lr_B)
  tune [CONFIG.yaml] [--lrs ...] [--ratios 1,2,4,8,16,32] [--budget STEPS] [--eta 3] [--output_dir D] [--key value ...]
                                          choose (lr_A, ratio) by successive halving on a validation split
                                          of the training data; writes tuned_config.yaml for `train`
  toy [--model paper|linear] [--widths 100 --steps 200 ...]
                                          the paper's section-3.2 toy (or a linear one): train and test loss
                                          over (lr_A, lr_B) per width, cells within 1% of the best marked
  diagnose RUN_DIR [RUN_DIR ...] [--output_dir D]
                                          delta_A vs delta_B over training (needs --feature_learning_steps)
"""


# Packages of the cli extra that only one feature needs; each is named where that feature starts, so a
# machine without them can still run everything else: the smollm2-135m alias (GGUF conversion, models.py)
# and --report_to tensorboard (config.py).
NEEDED_BY_ONE_FEATURE = ("gguf", "tensorboard")


def missing_cli_packages() -> list[str]:
    """The packages of pyproject's cli extra that are not installed (`pip install loraplus` leaves them out),
    leaving out those NEEDED_BY_ONE_FEATURE."""
    import importlib.metadata

    from packaging.requirements import Requirement

    try:
        requirements = [Requirement(r) for r in importlib.metadata.requires("loraplus") or []]
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return []
    missing = []
    for req in requirements:
        if (req.marker is not None and req.marker.evaluate({"extra": "cli"}) and not req.marker.evaluate({"extra": ""})
                and req.name not in NEEDED_BY_ONE_FEATURE):
            try:
                importlib.metadata.distribution(req.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(req.name)
    return missing


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # Deprecation notices between the libraries (e.g. PEFT calling a renamed transformers method) are for
    # their developers; on the CLI they would push a user error off its one line.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|accelerate)\.")
    logging.getLogger("loraplus").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import datasets
        import transformers

        # Errors stay one line: no weight-loading bars or load reports on stderr (a new head is expected).
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        datasets.disable_progress_bars()
        # datasets logs a parse failure before raising it; the raised error becomes our one line.
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    except ImportError:  # pragma: no cover
        pass


def _train(argv: list[str]) -> int:
    from loraplus.train.config import parse_train_args, train_help

    if any(a in ("-h", "--help") for a in argv):
        print(train_help())
        return 0
    cfg = parse_train_args(argv)
    from loraplus.train.pipeline import train
    from loraplus.train.distributed import is_writer

    try:
        summary = train(cfg)
    except KeyboardInterrupt:
        if is_writer():
            print(_resume_hint(cfg.output_dir, argv), file=sys.stderr)
        return 130

    if is_writer():  # under torchrun every rank returns here; one summary is enough
        _print_summary(cfg.output_dir, summary)
    return 0


def _resume_hint(output_dir: str, argv: list[str]) -> str:
    """What to run after Ctrl-C: the same command resuming from the newest whole checkpoint, if there is one."""
    import shlex

    from loraplus.train.reliability import latest_valid_checkpoint

    kept, _ = latest_valid_checkpoint(output_dir)
    if kept is None:
        return "interrupted before the first checkpoint; nothing was kept, rerun the same command to start again"
    args, i = [], 0
    while i < len(argv):  # the command as given, without any earlier --resume_from_checkpoint
        if argv[i] == "--resume_from_checkpoint":
            i += 2
            continue
        if not argv[i].startswith("--resume_from_checkpoint="):
            args.append(argv[i])
        i += 1
    command = shlex.join(["loraplus", "train", *args, "--resume_from_checkpoint", "latest"])
    return f"interrupted; {kept} is kept, continue with: {command}"


def _print_summary(output_dir: str, summary: dict) -> None:
    metric = summary["metric"]
    shown = {k: summary.get(split, {}).get(f"{prefix}_{metric}") for k, split, prefix in
             (("validation", "validation", "eval"), ("test", "test", "test"))}
    parts = [f"{k} {metric} {v:.4f}" for k, v in shown.items() if isinstance(v, float)]
    print(f"done: {summary['global_step']} steps in {summary['train_seconds']:.0f} s; " + ", ".join(parts))
    print(f"adapter, metrics.jsonl, summary.json and learning_curves.png in {output_dir}")


def _eval(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise LoraPlusError("usage: loraplus eval RUN_DIR [--test_file F | --dataset_name D] [--key value ...]")
    from loraplus.train.runs import evaluate_run

    metrics = evaluate_run(argv[0], argv[1:])
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


@dataclasses.dataclass
class MergeArguments:
    """`loraplus merge RUN_DIR OUT_DIR`; the output folder may also be given as --output_dir, like every command's."""

    output_dir: str | None = None


def _merge(argv: list[str]) -> int:
    from loraplus.train.arguments import parse_command

    flags, paths = parse_command(MergeArguments, argv, "merge", positionals=True)
    paths += [flags.output_dir] if flags.output_dir else []
    if len(paths) != 2:
        raise LoraPlusError("usage: loraplus merge RUN_DIR OUT_DIR (or RUN_DIR --output_dir OUT_DIR)")
    from loraplus.train.runs import merge_run

    print(f"merged model written to {merge_run(*paths)}")
    return 0


def _demo(argv: list[str]) -> int:
    from loraplus.experiments.demo import parse_demo_args, run_demo

    return run_demo(parse_demo_args(argv))


def _toy(argv: list[str]) -> int:
    from loraplus.experiments.toy import main_toy

    return main_toy(argv)


def _diagnose(argv: list[str]) -> int:
    from loraplus.experiments.diagnose import main_diagnose

    return main_diagnose(argv)


def _compare(argv: list[str]) -> int:
    from loraplus.experiments.compare import main_compare

    return main_compare(argv)


def _sweep(argv: list[str]) -> int:
    from loraplus.experiments.compare import main_sweep

    return main_sweep(argv)


def _tune(argv: list[str]) -> int:
    from loraplus.experiments.tune import main_tune

    return main_tune(argv)


def _usage_of(command: str) -> str:
    """The command's lines of USAGE (its synopsis and the indented lines under it)."""
    lines, inside = [], False
    for line in USAGE.splitlines():
        if line.startswith(f"  {command} "):
            inside = True
        elif not line.startswith("    "):
            inside = False
        if inside:  # a synopsis and its description may share a line, two or more spaces apart
            lines += re.split(r"\s{2,}", line.strip())
    return "usage: loraplus " + "\n    ".join(lines)


def _own_flags(command: str):
    """The arguments dataclass of a command's own flags (for its --help), or None for eval (train's keys)."""
    if command == "merge":
        return MergeArguments
    if command == "demo":
        from loraplus.experiments.demo import DemoArguments

        return DemoArguments
    if command in ("compare", "sweep"):
        from loraplus.experiments import compare

        return compare.CompareFlags if command == "compare" else compare.SweepArguments
    return None


# train, tune, toy and diagnose print their own, longer help; the others show their USAGE lines
SHORT_HELP = ("eval", "merge", "demo", "compare", "sweep")
COMMANDS = {"train": _train, "eval": _eval, "merge": _merge, "demo": _demo, "toy": _toy, "diagnose": _diagnose,
            "compare": _compare, "sweep": _sweep, "tune": _tune}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `loraplus` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command '{argv[0]}'; use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if argv[0] in SHORT_HELP and any(a in ("-h", "--help") for a in argv[1:]):
        print(_usage_of(argv[0]))
        own = _own_flags(argv[0])
        if own is not None:
            from loraplus.train.arguments import flag_lines

            print("\n".join(["", f"{argv[0]}'s own flags:" if argv[0] in ("compare", "sweep") else "flags:",
                             *flag_lines(own)]))
        if argv[0] in ("compare", "sweep"):
            print("\n--key value: any `loraplus train` key (`loraplus train --help` lists them)")
        return 0
    missing = missing_cli_packages()
    if missing:
        print(f"error: the loraplus command needs the application's packages ({', '.join(missing)} missing); "
              "install them with: pip install 'loraplus[cli]'", file=sys.stderr)
        return 2
    _setup_logging()
    try:
        return command(argv[1:])
    except LoraPlusError as e:
        print(f"error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, ...: the user's to fix, like a bad config
        from loraplus.train.files import os_error_line

        print(f"error: {' '.join(os_error_line(e).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if argv[0] in ("compare", "sweep", "tune"):
            print("interrupted; rerun the same command to continue: finished runs are reused and the "
                  "unfinished one resumes from its last checkpoint", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
