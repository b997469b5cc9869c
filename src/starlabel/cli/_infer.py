"""`starlabel infer`: labels, errors and flags for new spectra."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import EXIT_INCOMPLETE, _use_compilation_cache, _user_errors, app, console


# ----------------------------------------------------------------------------- infer
def _cross_validated_temperature(model: Path, train: Path, prior: str, likelihood: str) -> dict[str, Any]:
    """Choose the likelihood temperature and width calibration once, by k-fold CV on the training set only."""
    from ..data import read_dataset
    from ..models import calibration_options, load_model, select_temperature, unfitted_configuration

    fitted = load_model(model)
    training = read_dataset(train, labels=fitted.label_names)
    with console().status("choosing the temperature by cross-validation on the training set…"):
        selection = select_temperature(
            unfitted_configuration(fitted), training, prior=prior, likelihood=likelihood
        )
    calibration = selection.calibration
    if calibration is None:  # select_temperature calibrates or raises; this tells the checker
        raise ValueError("the temperature selection returned no error calibration.")
    typer.echo(
        f"temperature {selection.temperature:g}, error calibration {calibration.describe()}"
        f" (cross-validated on {train})",
        err=True,
    )
    return {
        "temperature": float(selection.temperature),
        "error_calibration": calibration_options(calibration),
    }


class EngineName(StrEnum):
    """Where the pipeline runs."""

    local = "local"
    ray = "ray"


class PriorName(StrEnum):
    """Label prior for the posterior estimators."""

    none = "none"
    gaussian = "gaussian"
    kde = "kde"


class LikelihoodName(StrEnum):
    """Per-pixel likelihood of the grid posterior mean."""

    gaussian = "gaussian"
    student = "student"


class UncertaintyName(StrEnum):
    """How the MAP test step's label covariance is computed."""

    fisher = "fisher"
    laplace = "laplace"
    nuts = "nuts"


class EstimatorName(StrEnum):
    """Point estimate and uncertainty of the test step."""

    map = "map"
    mean = "mean"
    nuts = "nuts"


@app.command()
@_user_errors
def infer(
    model: Annotated[Path, typer.Argument(help="Model file written by `starlabel train`.")],
    inputs: Annotated[list[str], typer.Argument(help="Dataset files, globs or folders.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Results table: .csv, .ecsv, .fits, .h5 or .parquet.")
    ],
    prior: Annotated[
        PriorName, typer.Option(help="Label prior learned from the training labels (for mean/nuts).")
    ] = PriorName.none,
    estimator: Annotated[
        EstimatorName,
        typer.Option(
            help="map: multi-start maximum likelihood; mean: grid posterior mean; nuts: NUTS posterior."
        ),
    ] = EstimatorName.map,
    temperature: Annotated[
        str, typer.Option(help="Likelihood temperature (a number, or 'auto' = cross-validated on --train).")
    ] = "1",
    train: Annotated[
        Path | None, typer.Option(help="Training dataset, needed for --temperature auto.")
    ] = None,
    likelihood: Annotated[
        LikelihoodName,
        typer.Option(
            help="Pixel likelihood for --estimator mean: gaussian, or student (robust to bad pixels)."
        ),
    ] = LikelihoodName.gaussian,
    uncertainty: Annotated[
        UncertaintyName,
        typer.Option(
            help="Errors of --estimator map: fisher (σ² + s², default), laplace (observed curvature)"
            " or nuts (posterior draws at the optimum)."
        ),
    ] = UncertaintyName.fisher,
    fit_rv: Annotated[
        bool, typer.Option("--fit-rv", help="Fit a radial-velocity shift jointly (columns rv, rv_err).")
    ] = False,
    fit_continuum: Annotated[
        int | None,
        typer.Option("--fit-continuum", help="Fit a multiplicative continuum of this order per region."),
    ] = None,
    binary: Annotated[
        bool,
        typer.Option(
            "--binary",
            help="Also fit a two-star model (columns binary, p_binary, delta_bic, <label>_2, …), decided by"
            " the threshold learned at training (train cannon --binary-calibration).",
        ),
    ] = False,
    chunk_size: Annotated[int, typer.Option(help="Spectra per chunk (bounds memory).")] = 1024,
    engine: Annotated[
        EngineName, typer.Option(help="local, or ray (needs starlabel[ray]).")
    ] = EngineName.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (auto or ray://host:port).")
    ] = None,
    num_workers: Annotated[int | None, typer.Option(help="Ray workers (default: one per CPU).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Discard an earlier run with other options instead of refusing.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    compilation_cache: Annotated[
        bool,
        typer.Option(
            help="Reuse compiled test steps across runs, resumes and Ray workers"
            " ($STARLABEL_CACHE_DIR/jax or ~/.cache/starlabel/jax)."
        ),
    ] = True,
    memmap: Annotated[
        bool,
        typer.Option(
            help="Memory-map rows of .npz inputs written by starlabel instead of copying them;"
            " use --no-memmap when other programs may rewrite the inputs during the run."
        ),
    ] = True,
) -> None:
    """Infer labels (with `<label>_err`) for every spectrum in the inputs, resumably.

    Runs chunk by chunk; results are written as they are produced into OUTPUT.run/ and
    merged into OUTPUT. Re-running the same command after a crash continues where it
    stopped. `<label>_err` are the calibrated total errors learned at training time
    (see docs/uncertainties.md) and `<label>_err_stat` the model's statistical part;
    a model trained with --no-calibrate (or by an older starlabel) gives statistical
    errors in both, and says so.
    """
    # The run manifest records each input's SHA-256 (~0.45 s per 577 MB on one core):
    # start it on a background thread now, while JAX and the pipeline import.
    from .._internal._hashing import hash_in_background

    hash_in_background(inputs)
    # The flags become a TestStep once, here; it refuses invalid combinations (one
    # place, models.TestStep) before any file is read.
    from ..models import TestStep

    options: dict[str, Any] = {}
    if estimator is not EstimatorName.map:
        options["estimator"] = estimator.value
    if likelihood is not LikelihoodName.gaussian:
        options["likelihood"] = likelihood.value
    if uncertainty is not UncertaintyName.fisher:
        options["uncertainty"] = uncertainty.value
    if prior is not PriorName.none:
        options["prior"] = prior.value
    auto = temperature.strip().lower() == "auto"
    if auto:
        options["temperature"] = "auto"
    else:
        try:
            value = float(temperature)
        except ValueError:
            raise ValueError(f"--temperature must be a number or 'auto', got {temperature!r}.") from None
        if value != 1.0:
            options["temperature"] = value
    if fit_rv:
        options["fit_rv"] = True
    if fit_continuum is not None:
        options["continuum_order"] = fit_continuum
    if binary:
        options["binary"] = True
    TestStep.from_options(options)  # checks the combination
    if auto:
        if train is None:
            raise ValueError("--temperature auto is cross-validated on the training set; pass --train DATA.")
        _use_compilation_cache(compilation_cache)
        options.update(_cross_validated_temperature(model, train, prior.value, likelihood.value))
    _use_compilation_cache(compilation_cache)  # after the option checks: a bad option fails fast
    from ..models import read_model_header
    from ..pipeline import run_inference

    header = read_model_header(model)
    if binary:
        if header.get("binary_calibration") is not None:
            options["binary_calibration"] = header["binary_calibration"]
        else:
            typer.echo(
                f"note: {model} has no binary calibration: `binary` uses the fixed rule delta_bic > 0,"
                " which also flags single stars the model misfits, and p_binary is NaN; retrain with"
                " `starlabel train cannon --binary-calibration` to learn the decision.",
                err=True,
            )
    if header.get("calibration") is None:
        when = "with --no-calibrate" if header.get("format_version", 1) >= 2 else "by an older starlabel"
        typer.echo(
            f"note: {model} was trained {when}, without error calibration: <label>_err are the"
            " model's statistical errors (too small on real spectra); retrain to calibrate them.",
            err=True,
        )
    summary = run_inference(
        model,
        inputs,
        output,
        chunk_size=chunk_size,
        engine=engine.value,
        address=address,
        num_workers=num_workers,
        overwrite=overwrite,
        infer_options=TestStep.from_options(options),
        progress=progress,
        compilation_cache=compilation_cache,
        memmap=memmap,
    )
    typer.echo(
        f"wrote {summary.n_written} rows to {output} ({summary.n_processed} inferred now,"
        f" {summary.n_resumed} resumed, {summary.n_errors} errors; report: {summary.errors_report})"
    )
    if summary.n_errors:
        typer.echo(f"first error: {summary.first_error}", err=True)
    if not summary.complete:
        raise typer.Exit(code=EXIT_INCOMPLETE)
