"""`starlabel prepare`: survey files to a normalised dataset."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ._common import _split_labels, _user_errors, app, startup_done


# ----------------------------------------------------------------------------- prepare
class GridName(StrEnum):
    """Gap-removed APOGEE output grid."""

    dr12 = "dr12"
    dr17 = "dr17"


class ContinuumName(StrEnum):
    """Continuum normalisation method."""

    sincos = "sincos"
    poly = "poly"
    quantile = "quantile"
    none = "none"


@app.command()
@_user_errors
def prepare(
    inputs: Annotated[list[str], typer.Argument(help="apStar/aspcapStar files or folders of them.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Dataset file to write (.h5 or .npz).")],
    allstar: Annotated[
        Path | None, typer.Option(help="allStar catalogue to join labels from (by APOGEE_ID).")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="Label columns to keep, comma-separated.")] = None,
    grid: Annotated[
        GridName, typer.Option(help="dr12: 7214 pixels; dr17: 7514 pixels (DR13-17).")
    ] = GridName.dr17,
    continuum: Annotated[
        ContinuumName, typer.Option(help="Continuum method (sincos and poly are linear and S/N-invariant).")
    ] = ContinuumName.sincos,
    cont_pixels: Annotated[
        str | None,
        typer.Option(help="Continuum pixels on the grid: .npy/.npz/text mask or indices, or 'all'."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar while reading.")] = True,
) -> None:
    """Read survey spectra, mask, cut, continuum-normalise and write a dataset.

    A file that cannot be read (truncated, corrupt, another grid) is named on stderr
    and in the printed report, and skipped; the other files are still prepared.
    """
    from ..data import write_dataset
    from ..survey import prepare as prepare_spectra

    startup_done()  # many files read: collect cyclic garbage from here on
    dataset, report = prepare_spectra(
        inputs,
        allstar=allstar,
        labels=_split_labels(labels),
        grid=grid.value,
        continuum=continuum.value,
        cont_pixels=cont_pixels,
        progress=progress,
    )
    for skipped in report.skipped:
        typer.echo(f"warning: skipped {skipped.path}: {skipped.reason}", err=True)
    typer.echo(str(report))
    write_dataset(dataset, output)
    typer.echo(f"wrote {dataset} to {output}")
