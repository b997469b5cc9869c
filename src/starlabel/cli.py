"""The ``starlabel`` command line: argument parsing and wiring only.

Exit codes, the same for every command:

- 0: success.
- 1: ``infer`` finished with spectra left without results (see its errors report);
  re-running the same command retries them.
- 2: bad input (a missing or unreadable file, a missing key, an unknown label, a bad
  option): one line ``error: …`` on stderr naming the culprit and the fix.
- 3: an internal error (a bug in starlabel or a library under it): a short message on
  stderr, and the full traceback in a log file whose path the message gives
  (``$STARLABEL_CACHE_DIR/logs/``, else ``~/.cache/starlabel/logs/``).
- 4: out of memory: one line ``error: out of memory …`` saying what to make smaller.

Numerical work lives in the library so that it can be tested on its own.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ._errors import StarlabelUserError
from ._version import __version__

app = typer.Typer(
    name="starlabel",
    help="Data-driven stellar labels from survey spectra (The Cannon, Lux, NN) on JAX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a model on a labelled dataset.", no_args_is_help=True)
app.add_typer(train_app, name="train")

console = Console(stderr=True)
_F = TypeVar("_F", bound=Callable[..., Any])

EXIT_INCOMPLETE = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_OUT_OF_MEMORY = 4

# What starlabel raises for bad files, keys, labels and option values. TypeError and
# RuntimeError are not here: inside the library they mean a bug, which must not be
# reported as if the user's input were wrong.
_USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    KeyError,
    ValueError,
    StarlabelUserError,  # e.g. pipeline.RunMismatchError: a restart with other options
)


def _write_crash_log(command: str, error: BaseException) -> Path | None:
    """Write the traceback of an internal error to a new log file; None if that fails."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    header = f"starlabel {__version__}, command {command!r}, {stamp}\nargv: {sys.argv!r}\n\n"
    text = header + "".join(traceback.format_exception(error))
    from ._internal._compile_cache import default_cache_dir  # (imports jax: only on a crash)

    try:
        folder = default_cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"starlabel-{command}-{stamp}-{os.getpid()}.log"
        path.write_text(text)
    except OSError:
        return None
    return path


def _is_out_of_memory(error: BaseException) -> bool:
    """True for Python's MemoryError and XLA's RESOURCE_EXHAUSTED (host or device memory)."""
    if isinstance(error, MemoryError):
        return True
    # Matched by name and message so that this check never imports jax.
    return type(error).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and "RESOURCE_EXHAUSTED" in str(error)


def _user_errors(fn: _F) -> _F:
    """Map exceptions to the documented exit codes (module docstring).

    User errors become one line and exit code 2; running out of memory is not a bug
    but a size to reduce, so it gets one line and exit code 4; anything else is a
    bug: a short message, the traceback in a log file, exit code 3.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as error:
            message = error.args[0] if error.args else repr(error)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except Exception as error:
            if type(error).__module__.split(".")[0] in ("typer", "click"):
                raise  # a command's own exit code or usage error (typer's Exit is a RuntimeError)
            if _is_out_of_memory(error):
                detail = str(error).splitlines()[0] if str(error) else type(error).__name__
                typer.echo(
                    f"error: out of memory in `{fn.__name__}` ({detail}). Process less at once "
                    "(a smaller `infer --chunk-size`, fewer spectra or pixels per file) "
                    "or use a machine with more memory.",
                    err=True,
                )
                raise typer.Exit(code=EXIT_OUT_OF_MEMORY) from None
            path = _write_crash_log(fn.__name__, error)
            where = f"traceback written to {path}" if path else "".join(traceback.format_exception(error))
            typer.echo(
                f"internal error (a bug in starlabel, not in your input): {type(error).__name__}: {error}\n"
                f"{where}\nPlease report it with that traceback.",
                err=True,
            )
            raise typer.Exit(code=EXIT_INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


_CACHE_HELP = (
    "Keep compiled code on disk and reuse it in later runs"
    " ($STARLABEL_CACHE_DIR/jax or ~/.cache/starlabel/jax); results do not change."
)
_CompilationCache = Annotated[bool, typer.Option(help=_CACHE_HELP)]


def _use_compilation_cache(enabled: bool) -> None:
    """Switch on JAX's persistent compilation cache before the command computes anything."""
    if enabled:
        from ._internal._compile_cache import enable_compilation_cache

        enable_compilation_cache()


def _split_labels(labels: str | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    names = tuple(n.strip() for n in labels.split(",") if n.strip())
    if not names:
        raise ValueError("--labels is empty; give comma-separated names such as teff,logg,m_h.")
    return names


def _version_callback(value: bool | None) -> None:
    if value:
        typer.echo(f"starlabel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Data-driven stellar labels from survey spectra."""


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

    `lines` writes the labels teff, logg, fe_h, alpha_fe, vmacro (+ <x>_fe) and the truth
    columns rv, snr, is_binary, q, flux_ratio, delta_v, teff_2, logg_2, vmacro_2.
    """
    from .data import simulate_cannon, simulate_linear_latent, simulate_lines, write_dataset

    if kind is SimulationKind.lines:
        if n_labels is not None:
            raise ValueError(
                "--n-labels does not apply to lines; add element labels with --elements mg,si,…."
            )
        data = simulate_lines(
            n_stars,
            population=population.value,
            elements=_split_labels(elements) or (),
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


# ----------------------------------------------------------------------------- train
def _load_training_set(data: Path, labels: str, *, drops_incomplete: bool) -> Any:
    """Read the training set and say how many stars train when some lack a label.

    ``drops_incomplete``: the model leaves out a star missing any label (the Cannon);
    otherwise a star trains on the labels it has (Lux, NN) and only stars with no
    known label contribute nothing (NN) or only their spectrum (Lux).
    """
    import numpy as np

    from .data import read_dataset

    names = _split_labels(labels)
    dataset = read_dataset(data, labels=names)
    typer.echo(f"training set: {dataset}", err=True)
    known = np.isfinite(dataset.labels)
    if not known.all():
        n = dataset.n_stars
        unknown = ", ".join(
            f"{name} {n - k}"
            for name, k in zip(dataset.label_names, known.sum(axis=0).tolist(), strict=True)
            if k < n
        )
        if drops_incomplete:
            used = int(known.all(axis=1).sum())
            typer.echo(
                f"training on {used} of {n} stars: {n - used} dropped because a label is unknown"
                f" (NaN; per label: {unknown}).",
                err=True,
            )
        else:
            partial = int((~known.all(axis=1)).sum())
            typer.echo(
                f"training on all {n} stars; {partial} lack some label (NaN; per label: {unknown})"
                " and train on the labels they have.",
                err=True,
            )
    return dataset


def _save_fitted(fitted: Any, output: Path, training_set: Any) -> None:
    fitted.save(output, training_set=training_set)  # its checksum goes into the provenance
    typer.echo(f"saved {fitted.kind} model with labels {list(fitted.label_names)} to {output}")


def _report_calibration(fitted: Any) -> None:
    """Print the error calibration learned at training time (or that there is none)."""
    calibration = getattr(fitted, "calibration", None)
    if calibration is None:
        typer.echo("errors: not calibrated (<label>_err will be the model's statistical errors)")
        return
    typer.echo(
        f"error calibration ({calibration.n_folds}-fold cross-validation on the training set):"
        " sigma_total^2 = (a sigma_stat)^2 + sigma_sys^2 (rchi2/median)^gamma"
    )
    typer.echo(
        f"  {'label':<10} {'a':>9} {'sigma_sys':>10} {'gamma':>6}   held-out std z before → after"
        "   |z|<1 before → after"
    )
    for row in calibration.table():
        typer.echo(
            f"  {row['label']:<10} {row['scale']:>9.3g} {row['floor']:>10.4g} {row['misfit_power']:>6.2f}"
            f"   {row['z_std_before']:>6.2f} → {row['z_std_after']:<6.2f}"
            f"            {row['coverage_before']:>5.1%} → {row['coverage_after']:.1%}"
        )


def _calibration_progress(calibrate: bool) -> str:
    return " and calibrating its errors (5-fold cross-validation)" if calibrate else ""


_LABELS_HELP = "Comma-separated label names to train on, e.g. teff,logg,m_h."
_CALIBRATE_HELP = (
    "Learn calibrated <label>_err by 5-fold cross-validation on the training set (default);"
    " --no-calibrate keeps the model's statistical errors and trains about 6x faster."
)


@train_app.command("cannon")
@_user_errors
def train_cannon(
    data: Annotated[Path, typer.Argument(help="Training dataset (.npz or .h5).")],
    labels: Annotated[str, typer.Option(help=_LABELS_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")],
    order: Annotated[int, typer.Option(help="Polynomial order in the labels.")] = 2,
    terms: Annotated[
        str | None,
        typer.Option(help='Explicit terms instead of --order, e.g. "teff + logg + teff^2 + logg*teff".'),
    ] = None,
    censor: Annotated[
        Path | None,
        typer.Option(
            help="JSON file {label: [[start_Å, end_Å], ...]}: each label only acts inside its windows."
        ),
    ] = None,
    l1: Annotated[float, typer.Option(help="L1 regularisation strength on non-constant θ terms.")] = 0.0,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Read DATA in blocks of stars (Cannon.fit_file) instead of loading it, for training"
            " sets larger than memory; needs an uncompressed .npz or HDF5 file and --l1 0;"
            " streamed models are not calibrated.",
        ),
    ] = False,
    compilation_cache: _CompilationCache = True,
    calibrate: Annotated[bool, typer.Option(help=_CALIBRATE_HELP)] = True,
) -> None:
    """Train The Cannon (polynomial in labels, intrinsic scatter, censoring, L1)."""
    dataset = None if stream else _load_training_set(data, labels, drops_incomplete=True)
    _use_compilation_cache(compilation_cache)  # after reading: a bad file fails before JAX loads
    from .models.cannon import Cannon

    windows = None
    if censor is not None:
        if not censor.exists():
            raise FileNotFoundError(f"--censor file {str(censor)!r} does not exist.")
        try:
            windows = json.loads(censor.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"--censor file {str(censor)!r} is not valid JSON: {error}") from None
    names = dataset.label_names if dataset is not None else _split_labels(labels)
    model = Cannon(label_names=names, order=order, terms=terms, censor=windows, l1=l1)
    if dataset is None:
        typer.echo(f"training set: {data} (streamed in blocks of stars)", err=True)
        fitted = model.fit_file(data, progress=True)
        info = dict(fitted.training_info)
        if info.get("n_missing_labels"):
            n_train, dropped = info["n_train"], info["n_missing_labels"]
            typer.echo(
                f"trained on {n_train} of {n_train + dropped} stars: {dropped} dropped because a label is"
                " unknown (NaN).",
                err=True,
            )
    else:
        with console.status(f"training The Cannon{_calibration_progress(calibrate)}…"):
            fitted = model.fit(dataset, calibrate=calibrate)
    _report_calibration(fitted)
    _save_fitted(fitted, output, dataset if dataset is not None else data)


class ScatterKind(StrEnum):
    """Lux extra-scatter error model."""

    pixel = "pixel"
    scalar = "scalar"
    none = "none"


@train_app.command("lux")
@_user_errors
def train_lux(
    data: Annotated[Path, typer.Argument(help="Training dataset (.npz or .h5).")],
    labels: Annotated[str, typer.Option(help=_LABELS_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")],
    latent_size: Annotated[int, typer.Option(help="Size of each star's latent vector.")] = 8,
    scatter: Annotated[
        ScatterKind, typer.Option(help="Learned extra flux scatter: per pixel, one scalar, or none.")
    ] = ScatterKind.pixel,
    compilation_cache: _CompilationCache = True,
    calibrate: Annotated[bool, typer.Option(help=_CALIBRATE_HELP)] = True,
) -> None:
    """Train Lux (latent-variable model of labels and flux, learned error model)."""
    dataset = _load_training_set(data, labels, drops_incomplete=False)
    _use_compilation_cache(compilation_cache)
    from .models.lux import Lux

    model = Lux(label_names=dataset.label_names, latent_size=latent_size, scatter=scatter.value)
    with console.status(f"training Lux{_calibration_progress(calibrate)}…"):
        fitted = model.fit(dataset, calibrate=calibrate)
    _report_calibration(fitted)
    _save_fitted(fitted, output, dataset)


@train_app.command("nn")
@_user_errors
def train_nn(
    data: Annotated[Path, typer.Argument(help="Training dataset (.npz or .h5).")],
    labels: Annotated[str, typer.Option(help=_LABELS_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")],
    hidden: Annotated[str, typer.Option(help="Hidden layer widths, comma-separated.")] = "128,64",
    epochs: Annotated[int, typer.Option(help="Training epochs (best validation epoch is kept).")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    compilation_cache: _CompilationCache = True,
    calibrate: Annotated[bool, typer.Option(help=_CALIBRATE_HELP)] = True,
) -> None:
    """Train the neural-network label regressor baseline."""
    widths = tuple(int(w) for w in hidden.split(",") if w.strip())
    dataset = _load_training_set(data, labels, drops_incomplete=False)
    _use_compilation_cache(compilation_cache)
    from .models.nn import NNRegressor

    model = NNRegressor(label_names=dataset.label_names, hidden=widths, epochs=epochs, seed=seed)
    with console.status(f"training the NN regressor{_calibration_progress(calibrate)}…"):
        fitted = model.fit(dataset, calibrate=calibrate)
    _report_calibration(fitted)
    _save_fitted(fitted, output, dataset)


# ----------------------------------------------------------------------------- infer
def _cross_validated_temperature(model: Path, train: Path, prior: str, likelihood: str) -> dict[str, Any]:
    """Choose the likelihood temperature and width calibration once, by k-fold CV on the training set only."""
    from .data import read_dataset
    from .models import load_model
    from .models._posterior_mean import _unfitted, calibration_options, select_temperature

    fitted = load_model(model)
    training = read_dataset(train, labels=fitted.label_names)
    with console.status("choosing the temperature by cross-validation on the training set…"):
        selection = select_temperature(_unfitted(fitted, None), training, prior=prior, likelihood=likelihood)
    calibration = selection.calibration
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
        typer.Option("--binary", help="Also fit a two-star model (columns binary, delta_chi2, delta_bic)."),
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
    options: dict[str, Any] = {}
    if estimator is not EstimatorName.map:
        options["estimator"] = estimator.value
    if likelihood is not LikelihoodName.gaussian:
        if estimator is not EstimatorName.mean or fit_rv or fit_continuum is not None or binary:
            raise ValueError(
                "--likelihood student works with --estimator mean (without --fit-rv, --fit-continuum"
                " or --binary); add --estimator mean or drop --likelihood."
            )
        options["likelihood"] = likelihood.value
    if uncertainty is not UncertaintyName.fisher:
        if estimator is not EstimatorName.map or fit_rv or fit_continuum is not None or binary:
            raise ValueError(
                "--uncertainty applies to the plain MAP test step (--estimator map, no --fit-rv,"
                " --fit-continuum or --binary); --estimator mean/nuts already give posterior errors."
            )
        options["uncertainty"] = uncertainty.value
    if prior is not PriorName.none:
        options["prior"] = prior.value
    if temperature.strip().lower() == "auto":
        if estimator is EstimatorName.map:
            raise ValueError(
                "--temperature tempers the posterior of --estimator mean or nuts; the MAP ignores it."
            )
        if train is None:
            raise ValueError("--temperature auto is cross-validated on the training set; pass --train DATA.")
        _use_compilation_cache(compilation_cache)
        options.update(_cross_validated_temperature(model, train, prior.value, likelihood.value))
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
    _use_compilation_cache(compilation_cache)  # after the option checks: a bad option fails fast
    from .models import read_model_header
    from .pipeline import run_inference

    header = read_model_header(model)
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
        infer_options=options,
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
    from .data import write_dataset
    from .survey import prepare as prepare_spectra

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
    from .data import read_dataset, read_result
    from .evaluate import evaluate_against

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
    from .mixtures import fit_membership_table

    with console.status("fitting the cluster and field mixture…"):
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
        from .evaluate import plot_membership

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
    from .evaluate import write_report

    path = write_report(run, truth=truth, labels=_split_labels(labels), out=output)
    typer.echo(f"wrote {path}")


# ----------------------------------------------------------------------------- demo
@app.command()
@_user_errors
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the demo's models, tables, plots and summary.")
    ] = Path("starlabel-demo"),
    quick: Annotated[bool, typer.Option(help="Smaller data and fewer epochs (for tests).")] = False,
    real: Annotated[bool, typer.Option(help="Also run on the shared real APOGEE giants when found.")] = True,
    compilation_cache: _CompilationCache = True,
) -> None:
    """Run the embedded default end to end: simulate, train, infer, evaluate, plot."""
    _use_compilation_cache(compilation_cache)
    from .demo import run_demo

    summary = run_demo(out, quick=quick, real=real, console=console)
    typer.echo(summary.text)
    typer.echo(f"\nplots, tables and summary written to {out}/ (summary: {summary.path})")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
