"""The training step and what feeds it: the loop, optimisers and schedules, on-device
augmentation and batches, the compute device and precision, the progress line."""
