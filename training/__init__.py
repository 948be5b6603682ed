"""The training engine: checkpoints, the meta-learning step and loop, fine-tuning, distributed helpers."""
