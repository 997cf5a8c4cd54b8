"""Checkpoints: save and restore round-trip exactly; non-finite values are never saved."""

import jax
import numpy as np
import pytest

from cnfax.run.checkpoint import Checkpointer


def _tree(scale=1.0):
    return {
        "params": {"w": scale * np.arange(6, dtype=np.float32).reshape(2, 3)},
        "key": jax.random.key_data(jax.random.key(3)),
        "step": np.asarray(5, np.int64),
    }


def test_save_restore_round_trip_is_exact(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for step, scale in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        ckpt.save(step, _tree(scale), validation_nll=4.0 - scale if step != 3 else 9.0)
    assert ckpt.latest_step() == 3
    step, restored = ckpt.restore(_tree())
    assert step == 3
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(_tree(3.0)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    best_step, best = ckpt.restore(_tree(), which="best")
    assert best_step == 2  # step 2 had the lowest validation NLL (2.0 < 3.0 < 9.0)
    np.testing.assert_array_equal(best["params"]["w"], _tree(2.0)["params"]["w"])
    assert sorted(ckpt.latest.all_steps()) == [2, 3]  # keep=2
    ckpt.close()


def test_non_finite_values_are_never_checkpointed(tmp_path):
    ckpt = Checkpointer(tmp_path)
    bad = _tree()
    bad["params"]["w"] = bad["params"]["w"].copy()
    bad["params"]["w"][0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ckpt.save(1, bad)
    assert ckpt.latest_step() is None
    ckpt.close()


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(1, _tree(1.0))
    ckpt.save(2, _tree(2.0))
    ckpt.close()
    for path in (tmp_path / "checkpoints" / "latest" / "2").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # truncate
    reopened = Checkpointer(tmp_path, keep=3)
    with pytest.warns(UserWarning, match="step 2 .* unreadable"):
        step, tree = reopened.restore(_tree())
    assert step == 1
    np.testing.assert_array_equal(tree["params"]["w"], _tree(1.0)["params"]["w"])
    reopened.close()
