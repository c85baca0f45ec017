"""Optimizer step time: LoRA+ groups against plain AdamW over the same parameters.

    python benchmarks/optimizer_step.py [--repeats 200] [--hidden 768] [--layers 12]

Both optimizers hold the same trainable tensors of one PEFT model (LoRA r=16 on every linear layer
of a Llama-shaped model built from a config) with identical gradients and the same weight decay (0.0,
create_loraplus_optimizer's default); steps alternate A/B so machine noise hits both alike. Prints the
median step time of each and their ratio (LoRA+ / AdamW).

Resolution: the repeats are cut into `--blocks` consecutive blocks and the ratio of medians is taken in
each. The spread of those block ratios is what one run can resolve: a difference inside it is noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def build(hidden: int, layers: int):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 64, 1))
    return get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=16, target_modules="all-linear", use_dora=False))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=5, help="blocks of repeats whose ratios give the resolution")
    args = parser.parse_args(argv)

    from loraplus import create_loraplus_optimizer

    model = build(args.hidden, args.layers)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    plain = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    loraplus = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16.0)
    timings = {"adamw": [], "loraplus": []}
    for i in range(args.repeats + 10):
        for name, opt in (("adamw", plain), ("loraplus", loraplus)) if i % 2 else (("loraplus", loraplus),
                                                                                    ("adamw", plain)):
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if i >= 10:  # the first steps allocate state
                timings[name].append(elapsed)
    med = {k: statistics.median(v) for k, v in timings.items()}
    n = sum(p.numel() for p in params)
    print(f"trainable tensors {len(params)}, params {n:,}, groups: adamw 1, loraplus {len(loraplus.param_groups)}")
    size = max(args.repeats // args.blocks, 1)
    blocks = [statistics.median(timings["loraplus"][i:i + size]) / statistics.median(timings["adamw"][i:i + size])
              for i in range(0, size * args.blocks, size) if timings["adamw"][i:i + size]]
    print(f"median step: adamw {med['adamw'] * 1e3:.3f} ms, loraplus {med['loraplus'] * 1e3:.3f} ms, "
          f"ratio {med['loraplus'] / med['adamw']:.4f} (repeats {args.repeats})")
    print(f"ratio in {len(blocks)} blocks of {size}: {min(blocks):.4f} to {max(blocks):.4f}; "
          f"a difference inside that range is not resolved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
