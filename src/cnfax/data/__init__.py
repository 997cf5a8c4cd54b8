"""Data: FFJORD's 2-D toy densities."""

from cnfax.data.toy import TOY_DATASETS, sample_toy, test_set, train_batch

__all__ = ["TOY_DATASETS", "sample_toy", "test_set", "train_batch"]
