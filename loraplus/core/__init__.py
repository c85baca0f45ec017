"""The LoRA+ library: parameter roles and groups, the optimizer, its rivals, and the Trainer hook.

Needs torch, transformers and peft only (`pip install loraplus`); nothing here imports the other layers
(README, "Architecture").
"""
