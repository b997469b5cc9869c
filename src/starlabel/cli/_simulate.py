"""`starlabel simulate`: write spectra with known labels."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ._common import _split_labels, _user_errors, app


# ----------------------------------------------------------------------------- simulate
class SimulationKind(StrEnum):
    """Which simulator `starlabel simulate` runs."""

    cannon = "cannon"
    latent = "latent"
    lines = "lines"


class Population(StrEnum):
    """Which stars `starlabel simulate lines` draws."""

    giants = "giants"
    dwarfs = "dwarfs"
    mixed = "mixed"


@app.command()
@_user_errors
def simulate(
    kind: Annotated[
        SimulationKind,
        typer.Argument(
            help="cannon: polynomial-in-labels spectra; latent: a linear latent-variable model (Lux);"
            " lines: APOGEE-like H-band spectra from a line list (curve of growth, Voigt profiles,"
            " noise, bad pixels, optional RV and binaries) that no starlabel model represents exactly."
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Dataset file to write (.npz or .h5).")],
    n_stars: Annotated[int, typer.Option(help="Number of stars.")] = 1000,
    n_pixels: Annotated[
        int | None,
        typer.Option(
            help="Pixels per spectrum (default 500; lines: the whole 7,214-pixel APOGEE DR12 grid)."
        ),
    ] = None,
    n_labels: Annotated[
        int | None, typer.Option(help="Number of labels (cannon, latent; default 3).")
    ] = None,
    snr: Annotated[float, typer.Option(help="Signal-to-noise per pixel (cannon only).")] = 100.0,
    bad_pixel_fraction: Annotated[
        float | None,
        typer.Option(help="Fraction of pixels masked (cannon, lines; default 0, lines 0.01)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    population: Annotated[
        Population, typer.Option(help="lines: giants, dwarfs or a 50/50 mix, drawn like an HR diagram.")
    ] = Population.giants,
    elements: Annotated[
        str | None,
        typer.Option(
            help="lines: comma-separated elements whose [X/Fe] become free labels <x>_fe"
            " (c,n,o,na,mg,al,si,s,k,ca,ti,v,mn,ni)."
        ),
    ] = None,
    free_vmicro: Annotated[
        bool,
        typer.Option(
            "--free-vmicro",
            help="lines: make the microturbulence a free label vmicro (km/s) instead of a function of logg.",
        ),
    ] = False,
    snr_min: Annotated[float, typer.Option(help="lines: lowest per-star S/N per pixel.")] = 60.0,
    snr_max: Annotated[float, typer.Option(help="lines: highest per-star S/N (drawn uniformly).")] = 250.0,
    rv_scale: Annotated[
        float, typer.Option(help="lines: standard deviation of radial velocities, km/s (0: rest frame).")
    ] = 0.0,
    binary_fraction: Annotated[
        float, typer.Option(help="lines: fraction of stars with a main-sequence companion.")
    ] = 0.0,
    first_pixel: Annotated[
        int,
        typer.Option(help="lines: first pixel of the DR12 grid to write (with --n-pixels, a sub-window)."),
    ] = 0,
    resolution: Annotated[float, typer.Option(help="lines: resolving power R at 16,000 Å.")] = 22_500.0,
    continuum_error: Annotated[
        float, typer.Option(help="lines: size of the smooth continuum-normalisation residual (0: none).")
    ] = 0.005,
    keep_continuum: Annotated[
        bool, typer.Option(help="lines: keep the stellar/instrument continuum instead of normalised flux.")
    ] = False,
) -> None:
    """Write a simulated dataset with known labels.

    `lines` writes the labels teff, logg, fe_h, alpha_fe, vmacro (+ vmicro, <x>_fe) and the truth
    columns rv, snr, is_binary, q, flux_ratio, delta_v, teff_2, logg_2, vmacro_2.
    """
    from ..data import simulate_cannon, simulate_linear_latent, simulate_lines, write_dataset

    if kind is SimulationKind.lines:
        if n_labels is not None:
            raise ValueError(
                "--n-labels does not apply to lines; add element labels with --elements mg,si,…."
            )
        data = simulate_lines(
            n_stars,
            population=population.value,
            elements=_split_labels(elements) or (),
            free_vmicro=free_vmicro,
            snr=(snr_min, snr_max),
            rv_scale=rv_scale,
            binary_fraction=binary_fraction,
            n_pixels=n_pixels,
            first_pixel=first_pixel,
            resolution=resolution,
            bad_pixel_fraction=0.01 if bad_pixel_fraction is None else bad_pixel_fraction,
            continuum_error=continuum_error,
            keep_continuum=keep_continuum,
            seed=seed,
        ).truth_dataset()
    elif kind is SimulationKind.cannon:
        data = simulate_cannon(
            n_stars,
            500 if n_pixels is None else n_pixels,
            3 if n_labels is None else n_labels,
            snr=snr,
            bad_pixel_fraction=bad_pixel_fraction or 0.0,
            seed=seed,
        ).dataset
    else:
        data = simulate_linear_latent(
            n_stars,
            n_labels=3 if n_labels is None else n_labels,
            n_pixels=500 if n_pixels is None else n_pixels,
            seed=seed,
        ).dataset
    write_dataset(data, output)
    typer.echo(f"wrote {data} to {output}")
