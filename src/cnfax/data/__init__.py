"""Data: FFJORD's 2-D toy densities."""

from cnfax.data.toy import TOY_DATASETS, held_out_set, sample_toy, train_batch

__all__ = ["TOY_DATASETS", "sample_toy", "held_out_set", "train_batch"]
