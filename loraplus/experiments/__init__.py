"""Experiments built from runs: compare, sweep, tune, the demo, the toy models and the feature-learning
diagnosis. Imports `loraplus.train` and below, never the CLI (README, "Architecture").
"""
