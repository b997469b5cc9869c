"""`starlabel evaluate`, `members` and `report`: score and look at results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import _CompilationCache, _split_labels, _use_compilation_cache, _user_errors, app, console
from ._train import _LABELS_HELP


# ----------------------------------------------------------------------------- evaluate
@app.command()
@_user_errors
def evaluate(
    results: Annotated[Path, typer.Argument(help="Results table from `starlabel infer`.")],
    data: Annotated[Path, typer.Argument(help="Dataset holding the reference labels (matched by id).")],
    labels: Annotated[str, typer.Option(help=_LABELS_HELP)],
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON.")] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Folder for one-to-one, residual and Kiel plots.")
    ] = None,
) -> None:
    """Print RMSE, bias, MAE and robust scatter per label against reference labels."""
    from ..data import read_dataset, read_result
    from ..evaluate import evaluate_against

    names = _split_labels(labels)
    result = read_result(results)
    reference = read_dataset(data, labels=names)
    table = evaluate_against(result, reference, names, plots=plots, model=results.stem)
    typer.echo(str(table))
    if json_path is not None:
        table.write_json(json_path)
        typer.echo(f"wrote {json_path}")


# ----------------------------------------------------------------------------- members
@app.command()
@_user_errors
def members(
    table: Annotated[Path, typer.Argument(help="Astrometry table (CSV, FITS or VOTable).")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output table: input columns + p_member, p_member_err.")
    ],
    pm: Annotated[
        str | None, typer.Option(help="Proper-motion columns, e.g. pmRA,pmDE (default: Gaia names).")
    ] = None,
    parallax: Annotated[
        str | None, typer.Option(help="Parallax column, e.g. Plx (default: Gaia names).")
    ] = None,
    errors: Annotated[
        str | None,
        typer.Option(
            help="Error columns in the order pm1,pm2[,parallax] (default: found by Gaia conventions)."
        ),
    ] = None,
    n_field_max: Annotated[
        int, typer.Option(help="Largest number of field components tried (chosen by BIC).")
    ] = 4,
    nuts: Annotated[bool, typer.Option(help="Sample the posterior with NUTS after the EM/MAP fit.")] = True,
    plots: Annotated[Path | None, typer.Option(help="Folder for membership plots.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    compilation_cache: _CompilationCache = True,
) -> None:
    """Cluster/field membership probabilities from proper motions and parallaxes."""
    if not table.exists():
        raise FileNotFoundError(f"table {str(table)!r} does not exist.")
    _use_compilation_cache(compilation_cache)
    from ..mixtures import fit_membership_table

    with console().status("fitting the cluster and field mixture…"):
        result = fit_membership_table(
            table,
            pm_columns=None if pm is None else tuple(c.strip() for c in pm.split(",")),
            parallax_column=parallax,
            error_columns=None if errors is None else tuple(c.strip() for c in errors.split(",")),
            n_field_max=n_field_max,
            nuts=nuts,
            seed=seed,
        )
    typer.echo(result.summary())
    result.write(output)
    json_path = output.with_suffix(".json")
    result.to_json(json_path)
    typer.echo(f"wrote {output} and {json_path}")
    if plots is not None:
        from ..evaluate import plot_membership

        for path in plot_membership(result, plots):
            typer.echo(f"plot: {path}")


# ----------------------------------------------------------------------------- report
@app.command()
@_user_errors
def report(
    run: Annotated[Path, typer.Argument(help="Run directory (OUT.run) or results table.")],
    truth: Annotated[
        Path | None, typer.Option(help="Dataset or table with reference labels (matched by id).")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="Labels to show, comma-separated.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="HTML file (default beside the run).")
    ] = None,
) -> None:
    """Write an offline HTML report (plots embedded) of an inference run."""
    from ..evaluate import write_report

    path = write_report(run, truth=truth, labels=_split_labels(labels), out=output)
    typer.echo(f"wrote {path}")
