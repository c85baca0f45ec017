"""metrics.jsonl: every Trainer log of a run (loss, eval metrics) with the A and B group lrs, append-only."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from loraplus.train.distributed import is_writer
from loraplus.train.files import json_text


class JsonlMetricsCallback(TrainerCallback):
    """Append every Trainer log (loss, eval metrics) to a JSON Lines file, with the A and B group lrs.

    The Trainer's own "learning_rate" is the first group's; LoRA+ has two that matter, so both are read
    from the optimizer's named groups right after the optimizer step, before the scheduler moves them:
    the lrs that step used, which is what the Trainer logs as its learning rate. Rank 0 writes alone.

    The file is only ever appended to. A run resumed from checkpoint-N appends a record
    `{"step": N, "resumed_from": "checkpoint-N"}` and replays the steps after N; `plots.read_metrics`
    reads the history as the resumed run made it (records after step N logged before the resume give
    way to the replayed ones), and the raw lines keep everything that was logged.
    """

    def __init__(self, path, resumed_from: str | None = None):
        self.path = path
        self.resumed_from = resumed_from
        self._lrs: dict[str, float] = {}
        self._trained = False

    def on_train_begin(self, args, state, control, **kwargs):
        path = Path(self.path)
        if not is_writer():
            return
        if not self.resumed_from or not path.is_file():  # a fresh run starts the file empty
            path.write_text("")
            return
        with open(path, "rb") as f:  # only the last byte: does the file end with a whole line?
            f.seek(0, 2)
            ends_cleanly = f.tell() == 0 or (f.seek(-1, 2), f.read(1))[1] == b"\n"
        with open(path, "a") as f:
            if not ends_cleanly:  # a line torn by the crash stays its own (unreadable) line
                f.write("\n")
            f.write(json_text({"step": state.global_step, "resumed_from": Path(self.resumed_from).name},
                              indent=None) + "\n")

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self._lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups}

    def on_train_end(self, args, state, control, **kwargs):
        self._trained = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not is_writer() or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        if self._trained:
            # Scores of the final (or best) model taken after training, on whichever split the caller asks:
            # marked, so no curve mistakes them for one more point of the evaluation set's series.
            record["after_training"] = True
        if "loss" in logs and "lora_A" in self._lrs:
            record["lr_A"] = self._lrs["lora_A"]
            record["lr_B"] = self._lrs.get("lora_B")
        with open(self.path, "a") as f:
            f.write(json_text(record, indent=None) + "\n")
