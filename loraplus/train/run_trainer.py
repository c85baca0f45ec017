"""The Trainer `loraplus train` runs: LoRA+ optimizer groups plus the speed paths and the NaN/Inf guard.

Mixins, outermost first, each overriding as little as it can:

- `NonFiniteGuardMixin` (guard.py) sees each step's whole loss, and its gradients before clipping;
- `SortedWithinBatchesMixin` (sampling.py) draws blocks of the global batch sorted by length and runs each
  process's batch as micro-batches padded to their own longest row;
- `TargetLogitsMixin` (target_logits.py) has causal LMs compute logits at target positions only;
- `LoraPlusTrainer` (trainer.py) builds the optimizer over the LoRA+ groups.

`loop_eval_prefix` names the evaluations of the training loop: "eval" on a validation split, "test"
when a comparison's final run follows the test split (its scores must never pass for validation ones).
"""

from loraplus.train.guard import NonFiniteGuardMixin
from loraplus.speed.sampling import SortedWithinBatchesMixin
from loraplus.speed.target_logits import TargetLogitsMixin
from loraplus.core.trainer import LoraPlusTrainer


class RunTrainer(NonFiniteGuardMixin, SortedWithinBatchesMixin, TargetLogitsMixin, LoraPlusTrainer):
    """LoraPlusTrainer with the guard, sorted global batches, micro-batches and target-position logits."""

    loop_eval_prefix = "eval"

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix=None):
        # The training loop calls evaluate() without a prefix; an explicit one (scoring after training) stays.
        prefix = self.loop_eval_prefix if metric_key_prefix is None else metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=prefix)
