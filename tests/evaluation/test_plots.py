"""Pictures: the density panel shows the flow's normalised density on the grid, and each
figure is written as a PNG of the expected size."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

import cnfax
from cnfax.evaluation.plots import LIMIT, density_grid, plot_image_grid, plot_panels


class ScaleField(nnx.Module):
    """f(t, z) = a z: x = exp(a T) z0, so p is N(0, exp(2 a T) I)."""

    def __init__(self, a):
        self.dim = 2
        self.a = nnx.Param(jnp.asarray(a))

    def __call__(self, t, z):
        return self.a[...] * z


def test_the_density_grid_is_the_flows_density_and_integrates_to_its_mass():
    """For x ~ N(0, s^2 I) with s = exp(a T) = 0.8, the grid holds the closed-form density,
    and its Riemann sum over [-4, 4]^2 is the Gaussian's mass there (>= 0.999999)."""
    flow = cnfax.CNF(ScaleField(np.log(0.8)), t1=1.0)
    axis, density = density_grid(flow, resolution=60)
    xx, yy = np.meshgrid(axis, axis)
    s2 = 0.8**2
    closed = np.exp(-(xx**2 + yy**2) / (2 * s2)) / (2 * np.pi * s2)
    np.testing.assert_allclose(density, closed, rtol=1e-3, atol=1e-7)
    cell = (axis[1] - axis[0]) ** 2
    assert abs(density.sum() * cell - 1.0) < 5e-3  # the trapezoid-free sum's error at 60^2
    assert axis[0] == -LIMIT and axis[-1] == LIMIT


def test_panels_and_image_grids_are_written_as_pngs(tmp_path):
    flow = cnfax.CNF(ScaleField(0.0), t1=1.0)
    data = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    panels = plot_panels(flow, data, tmp_path / "p.png", key=jax.random.key(0), n_samples=500)
    width, height = Image.open(panels).size
    assert (width, height) == (1080, 378)  # 12 x 4.2 inches at 90 dpi
    images = np.random.default_rng(1).integers(0, 17, size=(10, 64))
    grid = plot_image_grid(images, tmp_path / "g.png", shape=(8, 8), vmax=16, title="t")
    assert Image.open(grid).size[0] > 100
