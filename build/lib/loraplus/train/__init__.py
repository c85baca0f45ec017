"""One finetuning run, the `loraplus train` application: config, models, data, metrics, the run folder
(checkpoints, resume, file system), the NaN guard and the trainer composition. Imports `loraplus.core`
and `loraplus.speed`, never `loraplus.experiments` or the CLI (README, "Architecture").
"""
