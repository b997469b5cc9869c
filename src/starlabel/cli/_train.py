"""`starlabel train cannon|lux|nn|payne`: fit a model to a labelled dataset."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # annotations only: commands import the models they train when run
    from ..data import SpectralDataset
    from ..models import AbstractCalibratedModel, AbstractSpectralModel

from ._common import (
    _CompilationCache,
    _split_labels,
    _use_compilation_cache,
    _user_errors,
    console,
    train_app,
)


# ----------------------------------------------------------------------------- train
def _load_training_set(data: Path, labels: str, *, drops_incomplete: bool) -> Any:
    """Read the training set and say how many stars train when some lack a label.

    ``drops_incomplete``: the model leaves out a star missing any label (the Cannon);
    otherwise a star trains on the labels it has (Lux, NN) and only stars with no
    known label contribute nothing (NN) or only their spectrum (Lux).
    """
    import numpy as np

    from ..data import read_dataset

    names = _split_labels(labels)
    dataset = read_dataset(data, labels=names)
    typer.echo(f"training set: {dataset}", err=True)
    if dataset.labels is None:
        raise ValueError(f"training set {str(data)!r} has no labels; name them with --labels.")
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


def _save_fitted(fitted: AbstractCalibratedModel, output: Path, training_set: SpectralDataset | Path) -> None:
    fitted.save(output, training_set=training_set)  # its checksum goes into the provenance
    typer.echo(f"saved {fitted.kind} model with labels {list(fitted.label_names)} to {output}")


def _report_calibration(fitted: AbstractCalibratedModel) -> None:
    """Print the error calibration learned at training time (or that there is none)."""
    calibration = fitted.calibration
    if calibration is None:
        typer.echo("errors: not calibrated (<label>_err will be the model's statistical errors)")
        return
    local = calibration.local
    typer.echo(
        f"error calibration ({calibration.n_folds}-fold cross-validation on the training set):"
        " sigma_total^2 = f^2 [(a sigma_stat)^2 + sigma_sys^2 (rchi2/median)^gamma"
        + (" (L/mean L)^delta]" if local is not None else "]")
    )
    if local is not None:
        typer.echo(
            f"  L: mean squared held-out error of the {local.neighbours} training stars"
            " nearest in inferred labels"
        )
    if calibration.size_power is None:
        typer.echo(
            f"  training-size factor f = {calibration.size_factor:.3f} (irreducible share"
            f" r = {calibration.irreducible_share:g}: the fold models train on"
            f" {calibration.n_folds - 1}/{calibration.n_folds} of the stars)"
        )
    else:
        typer.echo(
            "  training-size factor f per label, from how the held-out errors shrink between"
            f" 1/2 and {calibration.n_folds - 1}/{calibration.n_folds} of the stars"
        )
    if calibration.bias is not None:
        typer.echo(
            f"  labels corrected by the mean held-out error of the {calibration.bias.neighbours} training"
            " stars nearest in inferred labels (<label>_bias; train with --no-bias-correction to keep"
            " the model's own labels)"
        )
    factors = calibration.size_factors
    typer.echo(
        f"  {'label':<10} {'a':>9} {'sigma_sys':>10} {'gamma':>6}"
        + (f" {'delta':>6}" if local is not None else "")
        + f" {'f':>6}   held-out std z before → after   |z|<1 before → after"
    )
    for k, row in enumerate(calibration.table()):
        delta = f" {row['local_power']:>6.2f}" if local is not None else ""
        typer.echo(
            f"  {row['label']:<10} {row['scale']:>9.3g} {row['floor']:>10.4g} {row['misfit_power']:>6.2f}"
            f"{delta} {factors[k]:>6.3f}   {row['z_std_before']:>6.2f} → {row['z_std_after']:<6.2f}"
            f"            {row['coverage_before']:>5.1%} → {row['coverage_after']:.1%}"
        )


def _calibration_progress(calibrate: bool) -> str:
    return " and calibrating its errors (5-fold cross-validation)" if calibrate else ""


_LABELS_HELP = "Comma-separated label names to train on, e.g. teff,logg,m_h."
_CALIBRATE_HELP = (
    "Learn calibrated <label>_err by 5-fold cross-validation on the training set (default);"
    " --no-calibrate keeps the model's statistical errors and trains about 6x faster."
)


def _censor_windows(censor: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """``--censor``: a JSON file of windows, ``aspcap``, or a .npy file of ASPCAP window codes."""
    if str(censor).lower() == "aspcap" and not censor.exists():
        from ..survey import aspcap_censor

        windows: dict[str, Any] = aspcap_censor(names)
    elif censor.suffix.lower() == ".npy":
        from ..survey import aspcap_censor

        windows = aspcap_censor(names, path=censor)
    else:
        if not censor.exists():
            raise FileNotFoundError(
                f"--censor file {str(censor)!r} does not exist (give a JSON windows file, 'aspcap' or"
                " an ASPCAP window-code .npy file)."
            )
        try:
            return json.loads(censor.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"--censor file {str(censor)!r} is not valid JSON: {error}") from None
    typer.echo(
        f"censoring {len(windows)} element label(s) to ASPCAP windows: "
        + ", ".join(f"{name} ({len(w)} windows)" for name, w in windows.items()),
        err=True,
    )
    return windows


_BinaryCalibration = Annotated[
    bool,
    typer.Option(
        "--binary-calibration",
        help="Also learn the decision of `infer --binary` (the binary_score threshold that 0.2% of"
        " the training stars exceed) by 5-fold cross-validation of two-star fits; needs wavelengths.",
    ),
]


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
            help="JSON file {label: [[start_Å, end_Å], ...]}: each label only acts inside its windows;"
            " or 'aspcap': each element label (mg_fe, al_h, ti2_fe, …) only acts inside ASPCAP's"
            " windows for its element (fe_h, m_h, teff, logg, vmicro stay free; needs wavelengths and"
            " the astroNN window file, see docs/abundances.md); or a .npy file of ASPCAP window codes."
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
    bias_correction: Annotated[
        bool,
        typer.Option(
            help="With calibration (default), also learn the label-space bias correction: infer"
            " subtracts from each star's labels the mean held-out error of the training stars"
            " nearest them (the <label>_bias column). --no-bias-correction keeps the model's own"
            " labels."
        ),
    ] = True,
    binary_calibration: _BinaryCalibration = False,
) -> None:
    """Train The Cannon (polynomial in labels, intrinsic scatter, censoring, L1)."""
    if stream and binary_calibration:
        raise ValueError("--binary-calibration needs the training set in memory; drop --stream.")
    if stream:  # the model header records the file's SHA-256: hash it while JAX imports
        from .._internal._hashing import hash_in_background

        hash_in_background([data])
    dataset = None if stream else _load_training_set(data, labels, drops_incomplete=True)
    _use_compilation_cache(compilation_cache)  # after reading: a bad file fails before JAX loads
    from ..models.cannon import Cannon

    names = dataset.label_names if dataset is not None else _split_labels(labels)
    if names is None:
        raise ValueError("--stream needs --labels: name the label columns, e.g. --labels teff,logg,m_h.")
    windows = None if censor is None else _censor_windows(censor, tuple(names))
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
        if calibrate:  # its held-out test step compiles on the other core while training runs
            from ..models.cannon import FittedCannon, prepare_calibration_test_step

            prepare_calibration_test_step(model.vectorizer, dataset.n_pixels, FittedCannon.infer_map)
        with console().status(f"training The Cannon{_calibration_progress(calibrate)}…"):
            fitted = model.fit(dataset, calibrate=calibrate, bias_correction=bias_correction)
    _report_calibration(fitted)
    if binary_calibration and dataset is not None:  # (--stream was refused above)
        _save_with_binary_decision(model, fitted, dataset, output)
        return
    _save_fitted(fitted, output, dataset if dataset is not None else data)


def _save_with_binary_decision(
    model: AbstractSpectralModel, fitted: AbstractCalibratedModel, dataset: SpectralDataset, output: Path
) -> None:
    """Learn the binary decision on the training set (K refits of ``model``) and save it in the file."""
    from ..models import learn_binary_calibration, save_model

    with console().status("learning the binary decision (5-fold cross-validation of two-star fits)…"):
        decision = learn_binary_calibration(model, dataset)
    typer.echo(
        f"binary decision: binary_score > {decision.threshold:.4g} ({decision.false_positive_rate:.1%}"
        f" of {decision.n_stars} held-out training stars above it)"
    )
    save_model(fitted, output, training_set=dataset, binary_calibration=decision)
    typer.echo(f"saved {fitted.kind} model with labels {list(fitted.label_names)} to {output}")


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
    from ..models.lux import Lux

    model = Lux(label_names=dataset.label_names, latent_size=latent_size, scatter=scatter.value)
    with console().status(f"training Lux{_calibration_progress(calibrate)}…"):
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
    from ..models.nn import NNRegressor

    model = NNRegressor(label_names=dataset.label_names, hidden=widths, epochs=epochs, seed=seed)
    with console().status(f"training the NN regressor{_calibration_progress(calibrate)}…"):
        fitted = model.fit(dataset, calibrate=calibrate)
    _report_calibration(fitted)
    _save_fitted(fitted, output, dataset)


@train_app.command("payne")
@_user_errors
def train_payne(
    data: Annotated[
        Path, typer.Argument(help="Training dataset (.npz or .h5): observed stars or a synthetic grid.")
    ],
    labels: Annotated[str, typer.Option(help=_LABELS_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")],
    hidden: Annotated[str, typer.Option(help="Hidden layer widths, comma-separated.")] = "300,300",
    components: Annotated[
        int,
        typer.Option(help="Learned spectra the flux is a combination of (the network's last, linear layer)."),
    ] = 32,
    epochs: Annotated[
        int,
        typer.Option(help="Most training epochs (the step decays over them; early stopping may end sooner)."),
    ] = 500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    compilation_cache: _CompilationCache = True,
    calibrate: Annotated[bool, typer.Option(help=_CALIBRATE_HELP)] = True,
    binary_calibration: _BinaryCalibration = False,
) -> None:
    """Train The Payne (neural network from labels to the whole spectrum, learned scatter)."""
    try:
        widths = tuple(int(w) for w in hidden.split(",") if w.strip())
    except ValueError:
        raise ValueError(
            f"--hidden must be comma-separated integers such as 300,300, got {hidden!r}."
        ) from None
    dataset = _load_training_set(data, labels, drops_incomplete=True)
    _use_compilation_cache(compilation_cache)
    from ..models.payne import Payne

    model = Payne(
        label_names=dataset.label_names, hidden=widths, n_components=components, epochs=epochs, seed=seed
    )
    with console().status(f"training The Payne{_calibration_progress(calibrate)}…"):
        fitted = model.fit(dataset, calibrate=calibrate)
    typer.echo(
        f"network {'-'.join(map(str, fitted.network.sizes))}: best validation epoch {fitted.best_epoch}"
        f" of {int(fitted.train_loss.shape[0])} run",
        err=True,
    )
    _report_calibration(fitted)
    if binary_calibration:  # K more trainings of the network
        _save_with_binary_decision(model, fitted, dataset, output)
        return
    _save_fitted(fitted, output, dataset)
