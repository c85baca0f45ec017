"""Feature-learning monitor (delta_A = s*B*dA*x, delta_B = s*dB*A*x) and `loraplus diagnose`."""

import json
import math

import pytest
import torch
from conftest import peft, tiny_gpt2, tiny_llama
from torch import nn

from loraplus import LoraPlusError, param_groups
from loraplus.experiments.diagnose import diagnose, main_diagnose
from loraplus.train.feature_learning import KEYS, FeatureLearningCallback, attach_feature_learning, lora_linear_layers


def _lora_llama(dropout=0.0):
    return peft(tiny_llama(), r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=dropout)


def _lora_gpt2():
    return peft(tiny_gpt2(), r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)


def _tokens(seed, n=8, length=12):
    return torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(seed))


def _adam(model, lr_A, lr_B):
    """Adam over the LoRA+ groups with lr_A and lr_B set exactly (0 allowed, unlike param_groups)."""
    groups = param_groups(model, lr=1.0, ratio=1.0)
    assert {g["name"] for g in groups} == {"lora_A", "lora_B"}
    for g in groups:
        g["lr"] = lr_A if g["name"] == "lora_A" else lr_B
    return torch.optim.Adam(groups)


def _monitored_steps(model, optimizer, steps, probe=None):
    """Train `steps` Adam steps on a fixed batch, measuring each one; the records of every step."""
    monitor = FeatureLearningCallback(1, probe or {"input_ids": _tokens(0)})
    ids = _tokens(1)
    out = []
    for step in range(1, steps + 1):
        model(input_ids=ids, labels=ids).loss.backward()
        monitor.snapshot(model)
        optimizer.step()
        out.append(monitor.measure(model, step))
        optimizer.zero_grad()
    return out


def test_lr_A_zero_gives_exactly_zero_delta_A():
    """With lr_A = 0, delta_A (and the cross term) is exactly 0 at every step while delta_B is not."""
    model = _lora_llama()
    steps = _monitored_steps(model, _adam(model, 0.0, 1e-2), 3)
    for records in steps:
        assert all(r["delta_A"] == 0.0 and r["cross"] == 0.0 for r in records)
        assert records[-1]["delta_B"] > 0
    assert steps[-1][-1]["norm_B"] > 0  # B moved, so delta_A = 0 is A's lr at work, not B = 0


def test_lr_B_zero_keeps_B_zero_and_both_deltas_zero():
    """With lr_B = 0 and B initialised to zero, B stays zero, so delta_A = delta_B = 0 at every step."""
    model = _lora_llama()
    for records in _monitored_steps(model, _adam(model, 1e-2, 0.0), 3):
        assert all(r["delta_A"] == 0.0 and r["delta_B"] == 0.0 and r["feature"] == 0.0 for r in records)
    assert all(torch.count_nonzero(layer.lora_B[ad].weight) == 0 for _, layer, ad in lora_linear_layers(model))


def test_first_adam_step_delta_B_is_linear_in_lr_B():
    """On the first Adam step from B = 0, delta_A = 0 and delta_B scales exactly with lr_B."""
    first = {}
    for lr_B in (1e-3, 4e-3):
        model = _lora_llama()
        first[lr_B] = _monitored_steps(model, _adam(model, 1e-3, lr_B), 1)[0]
    for small, large in zip(first[1e-3], first[4e-3]):
        assert small["layer"] == large["layer"]
        assert small["delta_A"] == large["delta_A"] == 0.0
        assert large["delta_B"] / small["delta_B"] == pytest.approx(4.0, rel=1e-5)


@pytest.mark.parametrize("build, layer_name", [(_lora_llama, "model.layers.1.self_attn.q_proj"),
                                                (_lora_gpt2, "transformer.h.1.attn.c_attn")])  # Conv1D base
def test_records_match_an_independent_recomputation(build, layer_name):
    """delta_A, delta_B, cross, feature, ||A||, ||B|| of one layer match a direct computation (padding masked)."""
    model = build()
    optimizer = _adam(model, 1e-2, 5e-2)
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[:3, 7:] = 0  # three padded rows: their tail must not count
    probe = {"input_ids": _tokens(0), "attention_mask": mask}
    _monitored_steps(model, optimizer, 1, probe)  # B != 0 afterwards, so every term is non-zero

    layer = next(layer for name, layer, _ in lora_linear_layers(model) if name == layer_name)
    a0, b0 = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        records = _monitored_steps(model, optimizer, 1, probe)[0]
    finally:
        handle.remove()
    a1, b1 = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    x = seen[-1][mask.bool()].double()  # the input of the measuring forward, real tokens only
    s = layer.scaling["default"]
    a0, b0, da, db = a0.double(), b0.double(), (a1 - a0).double(), (b1 - b0).double()

    def rms(m):
        return (m.norm() / math.sqrt(x.shape[0])).item()

    expected = {"delta_A": rms(s * x @ da.T @ b0.T), "delta_B": rms(s * x @ a0.T @ db.T),
                "cross": rms(s * x @ da.T @ db.T), "feature": rms(s * x @ a0.T @ b0.T),
                "norm_A": a0.norm().item(), "norm_B": b0.norm().item()}
    got = next(r for r in records if r["layer"] == layer_name)
    assert got["step"] == 1
    assert {k: got[k] for k in KEYS} == pytest.approx(expected, rel=1e-4)


# -- with the Trainer -----------------------------------------------------------------------------


def _train(output_dir, *, monitor_every=None, max_steps=4, model=None, ratio=16.0, lr=1e-3,
           data=None, batch_size=4, **args):
    """A LoraPlusTrainer run on a fixed token set (optionally with the monitor); the trainer."""
    from loraplus.core.trainer import LoraPlusTrainer, LoraPlusTrainingArguments
    from loraplus.train.metrics_log import JsonlMetricsCallback

    if data is None:
        data = [{"input_ids": ids, "labels": ids} for ids in _tokens(2, n=16)]
    args = LoraPlusTrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        loraplus_lr_ratio=ratio, logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, **args)
    trainer = LoraPlusTrainer(model=model or _lora_llama(dropout=0.1), args=args, train_dataset=data,
                              callbacks=[JsonlMetricsCallback(output_dir / "metrics.jsonl")])
    if monitor_every:
        attach_feature_learning(trainer, monitor_every)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def trainer_pair(tmp_path_factory):
    """The same dropout run with gradient accumulation, without and with the monitor (every 2 steps)."""
    plain = _train(tmp_path_factory.mktemp("plain"), gradient_accumulation_steps=2)
    monitored = _train(tmp_path_factory.mktemp("monitored"), monitor_every=2, gradient_accumulation_steps=2)
    return plain, monitored


def test_monitor_leaves_training_bitwise_unchanged(trainer_pair):
    """With lora_dropout > 0 and gradient accumulation, every weight ends bitwise equal with the monitor on."""
    plain, monitored = (dict(t.model.named_parameters()) for t in trainer_pair)
    assert plain.keys() == monitored.keys()
    assert all(torch.equal(plain[n], monitored[n]) for n in plain)
    assert any(p.requires_grad and p.abs().sum() > 0 for n, p in monitored.items() if "lora_B" in n)


def test_trainer_records_every_k_steps_to_file_and_log(trainer_pair):
    """The Trainer run writes one record per layer plus "all" at steps K, 2K to the jsonl and fl/* to its log."""
    trainer = trainer_pair[1]
    records = [json.loads(line) for line in open(f"{trainer.args.output_dir}/feature_learning.jsonl")]
    layers = {name for name, _, _ in lora_linear_layers(trainer.model)}
    assert len(layers) == 4
    assert [r["step"] for r in records if r["layer"] == "all"] == [2, 4]
    assert {r["layer"] for r in records} == layers | {"all"}
    logged = [h for h in trainer.state.log_history if "fl/delta_B" in h]
    assert [h["step"] for h in logged] == [2, 4]
    assert logged[-1]["fl/delta_A"] == records[-1]["delta_A"]


# -- diagnose -------------------------------------------------------------------------------------


class _Linear(nn.Module):
    """The paper's toy model (section 3.1): one wide linear layer fitted to a low-rank teacher change."""

    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width, bias=False)

    def forward(self, x, y=None):
        out = self.lin(x)
        return {"loss": ((out - y) ** 2).mean(), "logits": out}


def _toy_run(output_dir, ratio, width=256, steps=200):
    """A Trainer run of the toy at lr_A = 3e-3 with the monitor every 10 steps; its run folder."""
    torch.manual_seed(0)
    base = _Linear(width)
    teacher = base.lin.weight.detach() + torch.randn(width, 2) @ torch.randn(2, width) / width
    x = torch.randn(steps * 32, width)
    data = [{"x": xi, "y": yi} for xi, yi in zip(x, x @ teacher.T)]
    model = peft(base, r=4, lora_alpha=4, target_modules=["lin"])
    _train(output_dir, monitor_every=10, max_steps=steps, model=model, ratio=ratio, lr=3e-3, data=data,
           batch_size=32, lr_scheduler_type="constant")
    return output_dir


def test_diagnose_tells_ratio_1_from_ratio_16(tmp_path):
    """At equal lr_A, ratio 1 and ratio 16 get different verdicts, and ratio 1 is told to raise its ratio."""
    # Real runs; only the direction is asserted. Measured on this toy (median log10(delta_B / delta_A),
    # last half, seeds 0-3, plain loop): ratio 1 -0.09 to -0.18 ("balanced"), ratio 16 +0.69 to +0.86
    # ("B dominates"), about 8x apart, not 16x. This Trainer run: -0.21 and +0.70.
    one = diagnose(_toy_run(tmp_path / "r1", 1.0))
    sixteen = diagnose(_toy_run(tmp_path / "r16", 16.0))
    assert one["ratio"] == pytest.approx(1.0) and sixteen["ratio"] == pytest.approx(16.0)
    assert one["ratio_source"] == "metrics.jsonl"
    assert one["verdict"] != sixteen["verdict"]
    assert one["log10_ratio"] < sixteen["log10_ratio"]
    assert one["suggested_ratio"] > 1
    assert (tmp_path / "r1" / "feature_learning.png").stat().st_size > 0


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_main_diagnose_prints_factor_and_balancing_ratio(tmp_path, capsys):
    """delta_B = 10 x delta_A at ratio 2 reads "B dominates" by 10x and suggests ratio 0.2; a torn line is skipped."""
    _write(tmp_path / "feature_learning.jsonl",
           [{"step": s, "layer": "all", **dict.fromkeys(KEYS, 1.0), "delta_A": 0.1, "delta_B": 1.0}
            for s in (10, 20, 30, 40)])
    with open(tmp_path / "feature_learning.jsonl", "a") as f:
        f.write('{"step": 50, "layer": "al')  # a run still writing
    _write(tmp_path / "metrics.jsonl", [{"step": 0, "loss": 1.0, "lr_A": 0.0, "lr_B": 0.0},
                                        {"step": 10, "loss": 1.0, "lr_A": 1e-4, "lr_B": 2e-4}])
    out = tmp_path / "fl.png"
    assert main_diagnose([str(tmp_path), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "B dominates" in printed and "10x" in printed and "about 0.2 " in printed
    assert out.stat().st_size > 0
    assert diagnose(tmp_path, output=out)["suggested_ratio"] == pytest.approx(0.2)


def test_diagnose_without_records_is_one_line_error(tmp_path):
    """A run folder without feature_learning.jsonl raises LoraPlusError in one line naming the flag."""
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(LoraPlusError) as err:
        diagnose(tmp_path)
    assert "\n" not in str(err.value) and "--feature_learning_steps" in str(err.value)


def test_diagnose_output_dir_holds_one_plot_per_run(tmp_path):
    """`--output_dir D`, as every command names its output: each run's plot lands in D under the run's name."""
    runs = []
    for name, ratio in (("lora", 1.0), ("loraplus", 16.0)):
        run = tmp_path / name
        run.mkdir()
        records = [{"step": s, "layer": "all", "delta_A": 1e-3, "delta_B": 1e-3 * ratio, "cross": 0.0,
                    "feature": 1.0, "norm_A": 1.0, "norm_B": 1.0} for s in (1, 2, 3, 4)]
        (run / "feature_learning.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.append(str(run))
    assert main_diagnose([*runs, "--output_dir", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["lora_feature_learning.png",
                                                                     "loraplus_feature_learning.png"]
    assert not (tmp_path / "lora" / "feature_learning.png").exists()
