"""Data: FFJORD's 2-D toy densities, the digits, users' tables and the simulation-based
inference tasks (:mod:`~cnfax.data.dataset` puts them behind one interface), and the
preprocessing maps with their log-determinants (:mod:`~cnfax.data.preprocess`)."""

from cnfax.data import truncation, whitening  # noqa: F401 (register their maps for stored runs)
from cnfax.data.toy import TOY_DATASETS, held_out_set, sample_toy, train_batch

__all__ = ["TOY_DATASETS", "sample_toy", "held_out_set", "train_batch"]
