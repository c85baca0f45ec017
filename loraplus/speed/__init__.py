"""Speed paths for one Trainer step that change no result: sorted micro-batches, packed encoders, logits at
target rows only, cheaper CPU dropout. Each is a Trainer mixin or a model patch with an equivalence test;
imports only `loraplus.core` (README, "Architecture").
"""
