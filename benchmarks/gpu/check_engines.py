"""LoRA+ groups under FSDP and DeepSpeed ZeRO-2/3: each group holds exactly its role's parameters at its lr.

python benchmarks/gpu/check_engines.py --model DIR --data DIR [--device cuda|cpu] [--engines fsdp1,fsdp2,zero2,zero3]

For each engine one short `loraplus train` run starts the way the README documents it: `accelerate launch
--config_file examples/accelerate_fsdp.yaml` (FSDP1 with use_orig_params; FSDP2 by --fsdp_version 2) and
`torchrun ... --deepspeed examples/deepspeed_zero{2,3}.json`. Inside the run a probe, attached when the
Trainer builds its optimizer, looks at the optimizer after the engine has wrapped it and checks:

- groups: each group's parameters, traced back through the engine's wrappers to model parameter names,
  are exactly those that loraplus.core.groups gives that role on an unwrapped copy of the model (built the
  same way, before any engine exists, so ZeRO-3 cannot partition it), and each group starts at the
  policy's lr and weight decay (lora_A: lr, lora_B: lr * ratio, others: lr_other);
- lrs: at every step the schedule scales all groups by one factor, so lr_B / lr_A = ratio throughout;
- start: the A and B values the engine holds at the start are the unwrapped model's (B = 0);
- trained: after the last step every lora_A and lora_B tensor has moved (full fp32 values, gathered
  through the engine: deepspeed.utils.safe_get_full_fp32_param, FSDP.summon_full_params, DTensor);
- partitioned (ZeRO-3): every LoRA factor and every `modules_to_save` tensor is split across the processes;
- run: `loraplus train` finished (evaluation, checkpoint, best-model reload, save);
- saved: the adapter it saved holds the trained values of every A, B and `modules_to_save` tensor, gathered
  through the engine at the last step (the final save goes through `Trainer.save_model`, which gathers);
- model: the model trains in float32 weights, and the roles agree with the parameter names (a witness
  independent of groups.py, which never looks at names).

Prints one PASS/FAIL line per engine, writes OUT/engines.json, exits 1 when any engine failed.
On a CPU (--device cpu) FSDP and DeepSpeed (DS_ACCELERATOR=cpu) run over gloo with two processes.

ZeRO-3 keeps a parameter whole on every process when it has fewer values than
`stage3_param_persistence_threshold`, which transformers fills ("auto") with 10 x hidden size: 3,840 for
MiniLM, whose r = 8 factors hold 8 x 384 = 3,072 values and whose classifier 3 x 384 = 1,152. With the
example config nothing of the adapter would be partitioned, and a save that forgot to gather would still
look right. The zero3 run therefore uses examples/deepspeed_zero3.json with the threshold set to 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ENGINES = ("fsdp1", "fsdp2", "zero2", "zero3")

# Distinct rates for A, B and the head, so a parameter in the wrong group shows in its lr as well.
LR, RATIO, LR_OTHER, WEIGHT_DECAY = 1e-3, 16.0, 5e-4, 0.01
POLICY = {  # group -> (lr, weight decay): the README's table, stated here independently of groups.py
    "lora_A": (LR, WEIGHT_DECAY),
    "lora_B": (LR * RATIO, WEIGHT_DECAY),
    "other": (LR_OTHER, WEIGHT_DECAY),
    "other_no_decay": (LR_OTHER, 0.0),
}
LORA_GROUPS = ("lora_A", "lora_B")
SAVED_ROLES = ("lora_A", "lora_B", "other", "other_no_decay")  # the adapter file: factors and modules_to_save
# Wrapper prefixes inside parameter names: FSDP1, activation checkpointing, torch.compile.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


# -- the driver: one launch per engine ------------------------------------------------------------------


def launch_command(engine: str, args) -> list[str]:
    """The launcher line the README gives for `engine`, running this file as the worker."""
    worker = [str(Path(__file__).resolve()), "--worker", engine, "--model", args.model, "--data", args.data,
              "--device", args.device, "--steps", str(args.steps), "--work", str(args.work),
              f"--train_args={args.train_args}"]
    if engine.startswith("fsdp"):
        cmd = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(EXAMPLES / "accelerate_fsdp.yaml"), "--num_processes", str(args.processes),
               "--main_process_port", str(29500 + ENGINES.index(engine))]
        if engine == "fsdp2":
            cmd += ["--fsdp_version", "2"]
        if args.device == "cpu":
            # accelerate's FSDP plugin needs a GPU for sync_module_states (and so for cpu_ram_efficient_loading,
            # which relies on it), and bf16 autocast is for GPUs; everything else is the example's.
            cmd += ["--mixed_precision", "no", "--fsdp_sync_module_states", "false",
                    "--fsdp_cpu_ram_efficient_loading", "false"]
        return cmd + worker
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes),
            *worker]


def run_engine(engine: str, args) -> dict:
    """Launch one engine's run and read what its probe found (or why it found nothing)."""
    folder = Path(args.work) / engine
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if engine.startswith("zero"):
        try:
            import deepspeed  # noqa: F401
        except ImportError as e:
            return {"engine": engine, "passed": False, "checks": {"run": [False, f"deepspeed is not installed ({e})"]}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator; it talks over gloo without oneCCL
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = launch_command(engine, args)
    start = time.perf_counter()
    log = folder / "launch.log"
    with open(log, "w") as out:
        launched = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
        try:
            code = launched.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # torchrun puts its workers in sessions of their own and ends them on SIGTERM; the group kill
            # catches what is left in the launcher's session.
            launched.terminate()
            try:
                launched.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(launched.pid, signal.SIGKILL)
            except ProcessLookupError:  # the launcher's session had ended already
                pass
            launched.wait()
            code = f"timeout after {args.timeout} s"
    seconds = round(time.perf_counter() - start, 1)
    found = folder / "probe.json"
    if found.is_file():
        result = json.loads(found.read_text())
    else:
        result = {"engine": engine, "checks": {"run": [False, f"no probe result (exit {code}): {first_error(log)}"]}}
    # The launch as it ran, without this machine's folders (the record is committed to results/)
    shown = " ".join(cmd).replace(os.getcwd() + os.sep, "").replace(str(folder.parent), "$TMPDIR/loraplus-engines")
    shown = shown.replace(str(ROOT.parent) + os.sep, ".." + os.sep)  # the data beside the checkout
    result.update(engine=engine, seconds=seconds, exit=code, command=shown)
    result["passed"] = bool(result["checks"]) and all(ok for ok, _ in result["checks"].values())
    return result


def first_error(log: Path) -> str:
    """The first exception line a worker printed (the launchers' own tracebacks only repeat it)."""
    lines = log.read_text(errors="replace").splitlines()
    errors = [line.strip() for line in lines if re.match(r"^(\[rank\d+\]: )?[\w.]*(Error|Exception)\b.*:", line.strip())
              and "ChildFailedError" not in line]
    return (errors[0] if errors else " | ".join(lines[-5:]))[:400]


def summary_line(result: dict) -> str:
    checks = result["checks"]
    failed = [f"{name}: {detail}" for name, (ok, detail) in checks.items() if not ok]
    verdict = "PASS" if result["passed"] else "FAIL"
    body = "; ".join(failed) if failed else ", ".join(checks)
    return f"{verdict} {result['engine']:<6} {body} ({result.get('seconds', 0):.0f} s)"


def drive(args) -> int:
    args.work = Path(args.work or tempfile.mkdtemp(prefix="loraplus-engines-")).resolve()
    args.processes = args.processes or (1 if args.device == "cuda" else 2)
    engines = args.engines.split(",")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        sys.exit(f"unknown engine '{unknown[0]}'; use some of {', '.join(ENGINES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for engine in engines:
        result = run_engine(engine, args)
        print(summary_line(result), flush=True)
        if not result["passed"]:
            print(f"  log: {args.work / engine / 'launch.log'}", flush=True)
        results.append(result)
        # Written after each engine, so a run cut short by a time limit keeps what it found.
        report = {"device": args.device, "processes": args.processes, "steps": args.steps, "ratio": RATIO,
                  "policy": {k: {"lr": lr, "weight_decay": wd} for k, (lr, wd) in POLICY.items()},
                  "complete": len(results) == len(engines), "passed": all(r["passed"] for r in results),
                  "engines": results}
        (out / "engines.json").write_text(json.dumps(report, indent=1))
    return 0 if all(r["passed"] for r in results) else 1


# -- the worker: one `loraplus train` run with the probe attached -------------------------------------------


def clean(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def traced_groups(optimizer) -> tuple[list[str], list[dict], list[list]]:
    """(wrapper chain, the innermost optimizer's param_groups, each group's original model parameters).

    DeepSpeed replaces a group's "params" by flat fp32 partitions; the original (bf16 or fp32) model
    parameters of group i are kept by ZeRO-1/2 in `bit16_groups[i]` and by ZeRO-3 in the sub-groups
    `fp16_groups[s]` with `sub_group_to_group_id[s] == i` (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py).
    accelerate's AcceleratedOptimizer / DeepSpeedOptimizerWrapper hold the next layer in `.optimizer`.
    """
    chain, inner = [], optimizer
    while True:
        chain.append(type(inner).__name__)
        if hasattr(inner, "sub_group_to_group_id"):  # ZeRO-3
            base = inner.optimizer
            members = [[] for _ in base.param_groups]
            for sub, params in enumerate(inner.fp16_groups):
                members[inner.sub_group_to_group_id[sub]].extend(params)
            chain.append(type(base).__name__)
            return chain, base.param_groups, members
        for attr in ("bit16_groups", "bf16_groups"):  # ZeRO-1/2, DeepSpeed's bf16 optimizer
            if hasattr(inner, attr):
                base = inner.optimizer
                chain.append(type(base).__name__)
                return chain, base.param_groups, [list(g) for g in getattr(inner, attr)]
        nested = getattr(inner, "optimizer", None)
        if nested is None or nested is inner:
            return chain, inner.param_groups, [list(g["params"]) for g in inner.param_groups]
        inner = nested


def full_values(model, wanted: set[str]) -> dict:
    """Full fp32 values of the named parameters, gathered through whichever engine holds them (collective)."""
    import torch

    named = [(clean(n), p) for n, p in model.named_parameters() if clean(n) in wanted]
    if any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for _, p in named):
        from deepspeed.utils import safe_get_full_fp32_param

        values = {n: safe_get_full_fp32_param(p) for n, p in named}
        return {n: None if v is None else v.detach().float().cpu().clone() for n, v in values.items()}
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            return {clean(n): p.detach().float().cpu().clone() for n, p in model.named_parameters()
                    if clean(n) in wanted}
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4: no FSDP2 either
        DTensor = ()
    out = {}
    for n, p in named:
        tensor = p.full_tensor() if isinstance(p, DTensor) else p
        out[n] = torch.as_tensor(tensor).detach().float().cpu().clone()
    return out


def _close(a, b, rtol=1e-2, atol=1e-6) -> bool:
    """Within bf16 rounding: DeepSpeed keeps fp32 masters copied from the model after casting it to bf16."""
    import torch

    return a is not None and b is not None and a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol)


def make_probe(roles: dict[str, str], reference_start: dict, steps: int):
    """A TrainerCallback that checks the engine's optimizer against `roles` (name -> loraplus role)."""
    from transformers import TrainerCallback

    lora = {n for n, r in roles.items() if r in LORA_GROUPS}
    saved_names = {n for n, r in roles.items() if r in SAVED_ROLES}

    class EngineProbe(TrainerCallback):
        def __init__(self):
            self.checks: dict[str, list] = {}
            self.info: dict = {"attached": False}
            self.start = self.end = None
            self.step_lrs: list[dict] = []

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.info["attached"] = True
            chain, groups, members = traced_groups(optimizer)
            name_of = {id(p): clean(n) for n, p in model.named_parameters()}
            trainable = {clean(n) for n, p in model.named_parameters() if p.requires_grad}
            table, problems, seen = [], [], []
            for group, params in zip(groups, members):
                gname = group.get("name", "?")
                names = {name_of.get(id(p), f"<unnamed {tuple(p.shape)}>") for p in params}
                seen += names
                table.append({"name": gname, "tensors": len(params), "lr": group["lr"],
                              "initial_lr": group.get("initial_lr", group["lr"]),
                              "weight_decay": group.get("weight_decay")})
                expected = {n for n, r in roles.items() if r == gname}
                if gname not in POLICY:
                    problems.append(f"unexpected group {gname}")
                    continue
                if names != expected:
                    extra, missing = sorted(names - expected)[:2], sorted(expected - names)[:2]
                    problems.append(f"{gname} holds {len(names)} tensors, expected {len(expected)} "
                                    f"(extra {extra}, missing {missing})")
                lr, decay = POLICY[gname]
                if abs(table[-1]["initial_lr"] / lr - 1) > 1e-9 or (group.get("weight_decay", 0.0) != decay):
                    problems.append(f"{gname} at lr {table[-1]['initial_lr']:g} decay {group.get('weight_decay')}, "
                                    f"expected lr {lr:g} decay {decay:g}")
            if len(seen) != len(set(seen)) or set(seen) != trainable:
                problems.append(f"groups cover {len(set(seen))} of {len(trainable)} trainable tensors "
                                f"({len(seen) - len(set(seen))} twice)")
            if {g["name"] for g in table} != set(roles.values()):
                problems.append(f"groups {[g['name'] for g in table]}, expected {sorted(set(roles.values()))}")
            self.info.update(optimizer_chain=chain, groups=table)
            self.checks["groups"] = [not problems, "; ".join(problems) or
                                     ", ".join(f"{g['name']} {g['tensors']} @ {g['initial_lr']:g}" for g in table)]
            if any(hasattr(p, "ds_numel") for p in model.parameters()):  # ZeRO-3
                whole = [clean(n) for n, p in model.named_parameters()
                         if clean(n) in saved_names and not (p.numel() == 0 < p.ds_numel)]
                self.checks["partitioned"] = [not whole, f"{len(whole)} of {len(saved_names)} adapter tensors are "
                                              f"whole on each process, e.g. {whole[:1]}" if whole else
                                              f"all {len(saved_names)} adapter tensors partitioned"]
            self.start = full_values(model, lora)
            off = [n for n in lora if not _close(self.start.get(n), reference_start[n])]
            self.checks["start"] = [not off, f"{len(off)} A/B tensors differ from the unwrapped model's, e.g. "
                                    f"{off[:1]}" if off else "A and B as initialised (B = 0)"]

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            _, groups, _ = traced_groups(optimizer)
            lrs = {g.get("name"): (g["lr"], g.get("initial_lr", g["lr"])) for g in groups}
            self.step_lrs.append({"step": state.global_step, **{k: v[0] for k, v in lrs.items()}})
            factors = [lr / base for lr, base in lrs.values()]
            if max(factors) - min(factors) > 1e-9 * max(1.0, max(factors)):
                self.checks["lrs"] = [False, f"step {state.global_step}: groups scaled unequally {lrs}"]
            if state.global_step == steps:
                self.end = full_values(model, saved_names)

        def finish(self, run_error: str | None, saved_adapter: Path | None) -> None:
            self.checks.setdefault("lrs", [bool(self.step_lrs), f"lr_B / lr_A = {RATIO:g} at all "
                                          f"{len(self.step_lrs)} steps" if self.step_lrs else "no step ran"])
            if self.end is None:
                self.checks["trained"] = [False, "the last step never ended"]
            else:
                moved = {role: sum(1 for n in lora if roles[n] == role and self.end[n] is not None
                                   and bool((self.end[n] - self.start[n]).abs().max() > 0)) for role in LORA_GROUPS}
                total = {role: sum(1 for n in lora if roles[n] == role) for role in LORA_GROUPS}
                self.checks["trained"] = [moved == total, ", ".join(f"{r} moved {moved[r]}/{total[r]}"
                                                                     for r in LORA_GROUPS)]
            self.checks["run"] = [run_error is None, run_error or "loraplus train finished"]
            if saved_adapter is not None and self.end is not None:
                from safetensors.torch import load_file

                saved = load_file(saved_adapter)
                # PEFT saves without the adapter name: ...query.lora_A.default.weight -> ...query.lora_A.weight,
                # ...classifier.modules_to_save.default.weight -> ...classifier.weight
                def key(name):
                    return name.replace(".modules_to_save.default.", ".").replace(".default.", ".")

                off = [n for n in saved_names if not _close(saved.get(key(n)), self.end[n])]
                self.checks["saved"] = [not off, f"{len(off)} of {len(saved_names)} saved tensors differ from the "
                                        f"trained values, e.g. {off[:1]}" if off else
                                        f"adapter holds the trained values of all {len(saved_names)} tensors"]
            elif run_error is None:
                self.checks["saved"] = [False, "no adapter_model.safetensors"]

    return EngineProbe()


def worker(args) -> int:
    """One engine's `loraplus train` run (under its launcher) with the probe attached; rank 0 writes probe.json."""
    import torch
    from transformers import set_seed

    import loraplus.train.run_trainer
    from loraplus.train import pipeline
    from loraplus.train.data import prepare_data
    from loraplus.train.config import parse_train_args
    from loraplus.core.groups import parameter_roles
    from loraplus.train.models import load_tokenizer, resolve_model

    folder = Path(args.work) / args.worker
    data = Path(args.data)
    overrides = ["--model_name_or_path", args.model, "--train_file", str(data / "train.jsonl"),
                 "--validation_file", str(data / "dev.jsonl"), "--text_pair_column", "text_pair",
                 "--max_train_samples", "512", "--max_eval_samples", "64", "--lora_r", "8", "--lora_alpha", "8",
                 "--lora_target_modules", "query,value", "--learning_rate", str(LR), "--loraplus_lr_ratio", str(RATIO),
                 "--loraplus_lr_other", str(LR_OTHER), "--weight_decay", str(WEIGHT_DECAY), "--warmup_ratio", "0",
                 "--max_steps", str(args.steps), "--eval_steps", str(args.steps), "--logging_steps", "1",
                 "--per_device_train_batch_size", "8", "--output_dir", str(folder / "run"),
                 "--overwrite_output_dir", "true", "--report_to", "none",
                 "--bf16", "auto" if args.device == "cuda" else "false"]
    if args.worker == "zero3":  # every adapter tensor partitioned (module docstring)
        config = json.loads((EXAMPLES / "deepspeed_zero3.json").read_text())
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        partitioned = folder / "deepspeed_zero3_partitioned.json"
        if int(os.environ.get("RANK", "0")) == 0:
            partitioned.write_text(json.dumps(config, indent=1))
        else:
            while not partitioned.is_file():
                time.sleep(0.1)
        overrides += ["--deepspeed", str(partitioned)]
    elif args.worker.startswith("zero"):
        overrides += ["--deepspeed", str(EXAMPLES / f"deepspeed_{args.worker}.json")]
    overrides += shlex.split(args.train_args)
    cfg = parse_train_args(overrides)

    # The unwrapped reference, built as pipeline.train builds its model (same seed, so the same A init),
    # before TrainingArguments exist: under ZeRO-3 those make from_pretrained partition the weights.
    model_path = resolve_model(cfg.model_name_or_path)
    tokenizer = load_tokenizer(model_path)
    prepared = prepare_data(cfg, tokenizer)
    set_seed(cfg.seed)
    reference = pipeline.build_model(cfg, model_path, prepared, tokenizer)
    roles = parameter_roles(reference)
    by_name = dict(reference.named_parameters())
    reference_start = {n: by_name[n].detach().float().clone() for n, r in roles.items() if r in LORA_GROUPS}
    dtype = str(next(p for n, p in by_name.items() if ".lora_" not in n).dtype)
    # Names as an independent witness of the roles (the library itself never sorts by name).
    witness = [n for n, r in roles.items() if any((f".{g}." in n) != (r == g) for g in LORA_GROUPS)]
    del reference

    probe = make_probe(roles, reference_start, args.steps)
    original = loraplus.train.run_trainer.RunTrainer

    class ProbedTrainer(original):
        """The run's Trainer, attaching the probe once its optimizer exists (one hook, as the library does)."""

        def create_optimizer(self, model=None):
            optimizer = super().create_optimizer(model)
            if probe not in self.callback_handler.callbacks:
                self.add_callback(probe)
            return optimizer

    # pipeline.train imports RunTrainer from loraplus.train.run_trainer when called
    loraplus.train.run_trainer.RunTrainer = ProbedTrainer
    run_error = None
    try:
        pipeline.train(cfg)
    except Exception as e:  # noqa: BLE001 - any failure of the run is a finding, reported with the others
        run_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
    finally:
        loraplus.train.run_trainer.RunTrainer = original
    adapter = folder / "run" / "adapter_model.safetensors"
    probe.finish(run_error, adapter if run_error is None and adapter.is_file() else None)
    checks = probe.checks
    if not probe.info["attached"]:
        checks["groups"] = [False, "the probe never saw an optimizer (does pipeline.train still use "
                            "loraplus.train.run_trainer.RunTrainer?)"]
    checks["model"] = [dtype == "torch.float32" and not witness,
                       f"base weights {dtype}" + (f"; roles disagree with names: {witness[:2]}" if witness else "")]
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        import importlib.metadata as metadata

        versions = {}
        for dist in ("torch", "transformers", "peft", "accelerate", "deepspeed"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                versions[dist] = None
        result = {"engine": args.worker, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                  "device": args.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "checks": checks, **probe.info, "lrs_by_step": probe.step_lrs, "versions": versions}
        (folder / "probe.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (e.g. gpu-bundle/minilm)")
    parser.add_argument("--data", required=True, help="folder with train.jsonl and dev.jsonl (MNLI)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--processes", type=int, default=0, help="processes per run (default: 1 on cuda, 2 on cpu)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per engine")
    parser.add_argument("--train_args", default="", help="more `loraplus train` flags for every run, e.g. "
                        "'--load_best_model_at_end false' to look past a failure at the end of training")
    parser.add_argument("--out", default=".", help="where engines.json goes")
    parser.add_argument("--work", default=None, help="scratch folder for the runs (default: a temp folder)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Workers start in the repository root: make folder paths absolute (a built-in alias such as minilm stays).
    if Path(args.model).exists():
        args.model = str(Path(args.model).resolve())
    args.data = str(Path(args.data).resolve())
    return worker(args) if args.worker else drive(args)


if __name__ == "__main__":
    sys.exit(main())
