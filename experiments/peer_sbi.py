"""sbi 0.27.0's NPE and FMPE as the peers of the SBI benchmark (experiments/bench_sbi.py).

NPE (sbi's ``NPE`` = ``NPE_C``) with a neural spline flow (``density_estimator="nsf"``,
sbibm's choice for NPE); FMPE (flow-matching posterior estimation, Dax et al. 2023) with
sbi's default vector field (``vf_estimator="mlp"``), sampled by sbi's ODE solve. Both
with sbi's default training: Adam 5e-4, batch 200, a 10 % validation split, early
stopping after 20 epochs without improvement, the best weights restored. Each is trained
on the very pairs cnfax's ``--dataset TASK --simulations N --seed S`` draws
(:func:`cnfax.data.dataset.simulated_pairs`), all N of them: sbi splits off its own
validation set, as cnfax does (cnfax also keeps 10 % as a test split it never trains
on). The prior is the task's: ``BoxUniform`` on the prior box, else Gaussian linear's
N(0, 0.1 I). ``posterior.sample`` rejects draws outside the prior's support, as sbi
always does.

torch and sbi are imported inside the functions: the optional ``peers`` extra, never
``make test``'s.
"""

from __future__ import annotations

import time

import numpy as np

from cnfax.data.dataset import simulated_pairs
from cnfax.data.sbi import SBI_TASKS, GaussianLinear


def torch_prior(task_name: str):
    """The task's prior as a torch distribution sbi accepts."""
    import torch
    from sbi.utils import BoxUniform

    task = SBI_TASKS[task_name]
    box = task.prior_box
    if box is not None:
        low, high = (torch.as_tensor(bound, dtype=torch.float32) for bound in box.bounds())
        return BoxUniform(low=low, high=high)
    if not isinstance(task, GaussianLinear):
        raise ValueError(f"{task_name}: no torch prior is written for this task")
    mean = torch.zeros(task.theta_dim)
    covariance = task.prior_variance * torch.eye(task.theta_dim)
    return torch.distributions.MultivariateNormal(mean, covariance)


class SBIPosterior:
    """sbi's posterior behind cnfax's ``sample(key, n, condition=x_o)`` signature, so the
    benchmark scores both the same way."""

    def __init__(self, posterior, seed: int):
        self.posterior, self.seed = posterior, seed

    def sample(self, key, n: int, condition) -> np.ndarray:
        import jax
        import torch

        torch.manual_seed(int(jax.random.randint(key, (), 0, 2**31 - 1)) ^ self.seed)
        x_o = torch.as_tensor(np.asarray(condition, np.float32))[None]
        theta = self.posterior.sample((n,), x=x_o, show_progress_bars=False)
        return theta.numpy().astype(np.float64)


def _train(task_name: str, n: int, seed: int, make_inference) -> dict:
    """An sbi method trained on the n pairs; the training seconds, epochs, posterior."""
    import torch

    theta, x = simulated_pairs(task_name, seed=seed, simulations=n)
    torch.manual_seed(seed)
    inference = make_inference(torch_prior(task_name))
    inference.append_simulations(
        torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
    )
    start = time.perf_counter()
    estimator = inference.train()
    seconds = time.perf_counter() - start
    summary = inference.summary
    return {
        "training_seconds": seconds,
        "iters": f"{summary['epochs_trained'][-1]} epochs",
        "model": SBIPosterior(inference.build_posterior(estimator), seed),
    }


def train_npe(task_name: str, n: int, seed: int) -> dict:
    """NPE with a neural spline flow (module docstring)."""
    from sbi.inference import NPE

    return _train(
        task_name,
        n,
        seed,
        lambda prior: NPE(prior=prior, density_estimator="nsf", show_progress_bars=False),
    )


def train_fmpe(task_name: str, n: int, seed: int) -> dict:
    """FMPE with sbi's default MLP vector field (module docstring)."""
    from sbi.inference import FMPE

    return _train(task_name, n, seed, lambda prior: FMPE(prior=prior, show_progress_bars=False))


# --sbi-peers names; the benchmark's rows are "sbi NPE", "sbi FMPE"
PEERS = {"npe": train_npe, "fmpe": train_fmpe}
