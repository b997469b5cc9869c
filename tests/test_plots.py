import numpy as np
from matplotlib.image import imread

from starlabel.data import simulate_cannon
from starlabel.evaluate import find_kiel_labels, plot_kiel, plot_one_to_one, plot_residuals, plot_spectrum


def _nonblank(path):
    image = imread(path)
    return image.std() > 0.01


def test_plots_are_written_and_not_blank(tmp_path):
    sim = simulate_cannon(100, 50, 3, bad_pixel_fraction=0.05, seed=2)
    noisy = sim.true_labels * (1 + 0.01 * np.random.default_rng(0).normal(size=sim.true_labels.shape))
    names = sim.dataset.label_names
    paths = [
        plot_one_to_one(
            noisy, sim.true_labels, names, tmp_path / "a" / "o2o.png", errors=np.abs(noisy) * 0.01
        ),
        plot_residuals(noisy, sim.true_labels, names, tmp_path / "res.png"),
        plot_kiel(noisy[:, 0], noisy[:, 1], tmp_path / "kiel.png", metallicity=noisy[:, 2]),
        plot_spectrum(
            sim.dataset.wavelength,
            sim.dataset.flux[0],
            tmp_path / "spec.png",
            model_flux=sim.true_flux[0],
            ivar=sim.dataset.ivar[0],
            mask=sim.dataset.mask[0],
        ),
    ]
    assert all(p.exists() and _nonblank(p) for p in paths)


def test_find_kiel_labels():
    assert find_kiel_labels(("teff", "logg", "m_h")) == ("teff", "logg", "m_h")
    assert find_kiel_labels(("TEFF", "LOGG")) == ("TEFF", "LOGG", None)
    assert find_kiel_labels(("label_0", "label_1")) is None
