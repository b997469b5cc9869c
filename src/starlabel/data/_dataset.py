"""The spectral data model: N spectra on a common P-pixel grid, with optional labels."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from .._internal import as_aligned, as_float_array, check_label_names, check_shape, empty_aligned

__all__ = ["SpectralDataset"]

logger = logging.getLogger(__name__)


def _aligned_float64(value: Any, name: str, copy: bool) -> np.ndarray:
    """``value`` as an aligned float64 array, converting numeric arrays in one copy.

    Survey files often store float32; converting straight into the aligned buffer
    avoids a second, unaligned intermediate. Anything else goes through the usual
    conversion (and its error message naming ``name``).
    """
    numeric = isinstance(value, np.ndarray) and value.dtype.kind in "fiu"
    return as_aligned(value if numeric else as_float_array(value, name), copy=copy, dtype=np.float64)


def _any_negative(array: np.ndarray) -> bool:
    # min() is one fast pass; NaN makes it NaN, and then the exact test decides.
    return array.size > 0 and not array.min() >= 0 and bool(np.any(array < 0))


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


class SpectralDataset:
    """An immutable set of N spectra × P pixels, with uncertainties, masks and labels.

    Uncertainties are stored as inverse variances (``ivar``, units of flux⁻²) because
    ``ivar == 0`` is the one representation of "no information" that every model can
    use without branching. Bad pixels are both flagged in ``mask`` (``True`` = bad) and
    given ``ivar == 0``; the two are kept consistent at construction.

    Non-finite flux, non-finite or zero uncertainties are not errors: such pixels are
    masked, their flux set to 0 and ivar to 0, and the number repaired is stored in
    :attr:`n_repaired` (and logged). Missing labels are NaN and are allowed.

    Parameters
    ----------
    flux : array-like, shape (stars, pixels)
        Flux, typically continuum-normalised (dimensionless).
    flux_err : array-like, shape (stars, pixels), optional
        1-σ flux uncertainties, same units as ``flux``. Give this or ``ivar``.
    ivar : array-like, shape (stars, pixels), optional
        Inverse variances, ``1 / flux_err**2``. Give this or ``flux_err``.
    mask : array-like of bool, shape (stars, pixels), optional
        ``True`` marks a bad pixel. Default: no pixel is bad beyond repaired ones.
    wavelength : array-like, shape (pixels,), optional
        Vacuum wavelength of each pixel in Å, strictly increasing.
    labels : array-like, shape (stars, labels), optional
        Reference labels (e.g. Teff in K, logg in dex, [Fe/H] in dex). NaN = missing.
    label_names : sequence of str, optional
        One name per label column; required when ``labels`` is given.
    label_err : array-like, shape (stars, labels), optional
        1-σ label uncertainties (non-negative; NaN = unknown).
    ids : sequence of str, shape (stars,), optional
        Star identifiers (default ``"0"``, ``"1"``, …). Must be unique.
    meta : mapping, optional
        Free-form metadata (survey, data release, provenance), carried along unchanged.
    copy : bool
        True (default): keep private copies of ``flux`` and ``ivar``. False: adopt
        float64 ``flux``/``ivar`` arrays that are C-ordered and 64-byte aligned as they
        are (others are still copied) — they are repaired in place and made read-only.
        For readers that own freshly read arrays. (``mask`` is never kept: it is folded
        into ``ivar``.)

    Raises
    ------
    ValueError
        On shape mismatches (naming both arrays and their shapes), negative
        uncertainties, duplicate ids, or label names that do not match the labels.
    TypeError
        When both or neither of ``flux_err`` and ``ivar`` are given.

    Examples
    --------
    >>> import numpy as np
    >>> ds = SpectralDataset(np.ones((2, 3)), flux_err=np.full((2, 3), 0.01),
    ...                      labels=[[4800.0, 2.5], [5000.0, np.nan]],
    ...                      label_names=("teff", "logg"))
    >>> ds.n_stars, ds.n_pixels, ds.label_names
    (2, 3, ('teff', 'logg'))
    """

    __slots__ = (
        "flux",
        "ivar",
        "_mask",
        "wavelength",
        "labels",
        "label_names",
        "label_err",
        "ids",
        "meta",
        "n_repaired",
    )

    flux: np.ndarray
    ivar: np.ndarray
    _mask: np.ndarray | None
    wavelength: np.ndarray | None
    labels: np.ndarray | None
    label_names: tuple[str, ...]
    label_err: np.ndarray | None
    ids: np.ndarray
    meta: Mapping[str, Any]
    n_repaired: int

    def __init__(
        self,
        flux: Any,
        flux_err: Any = None,
        *,
        ivar: Any = None,
        mask: Any = None,
        wavelength: Any = None,
        labels: Any = None,
        label_names: Sequence[str] | None = None,
        label_err: Any = None,
        ids: Sequence[Any] | np.ndarray | None = None,
        meta: Mapping[str, Any] | None = None,
        copy: bool = True,
    ) -> None:
        flux = _aligned_float64(flux, "flux", copy)
        if flux.ndim != 2:
            raise ValueError(
                f"`flux` must be 2-D (stars, pixels) but has shape {flux.shape};"
                " for a single spectrum use flux[None, :]."
            )
        n_stars, n_pixels = flux.shape
        spectra_shape = f"(stars, pixels) = {flux.shape} of `flux`"

        if (flux_err is None) == (ivar is None):
            raise TypeError(
                "give exactly one of `flux_err` or `ivar` (got "
                + ("both" if flux_err is not None else "neither")
                + "); use ivar=np.zeros_like(flux) if the uncertainties are unknown"
                " and you only need predictions."
            )
        if flux_err is not None:
            err = as_float_array(flux_err, "flux_err")
            check_shape(err, flux.shape, "flux_err", f"matching {spectra_shape}")
            if _any_negative(err):
                raise ValueError(
                    f"`flux_err` has {int(np.sum(err < 0))} negative values; uncertainties"
                    " must be >= 0 (use mask= or ivar=0 to flag bad pixels)."
                )
            ivar_arr = empty_aligned(err.shape)
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(1.0, err**2, out=ivar_arr)
        else:
            ivar_arr = _aligned_float64(ivar, "ivar", copy)
            check_shape(ivar_arr, flux.shape, "ivar", f"matching {spectra_shape}")
            if _any_negative(ivar_arr):
                raise ValueError(
                    f"`ivar` has {int(np.sum(ivar_arr < 0))} negative values; inverse"
                    " variances must be >= 0 (0 marks a pixel without information)."
                )

        flagged: np.ndarray | None = None
        if mask is not None:
            flagged = np.asarray(mask)
            if flagged.dtype != bool:
                raise TypeError(
                    f"`mask` must be boolean (True = bad pixel), got dtype {flagged.dtype};"
                    " convert bitmasks with e.g. (bitmask & bad_bits) != 0."
                )
            check_shape(flagged, flux.shape, "mask", f"matching {spectra_shape}")
            if not flagged.any():
                flagged = None

        # Repair, do not reject: survey data routinely carry NaN or inf in bad pixels.
        # Finite sums mean no NaN or inf anywhere: the usual case costs one pass per
        # array. Every bad pixel ends with ivar = 0, so the mask is ivar == 0, formed
        # only when asked for (see the ``mask`` property).
        n_repaired = 0
        if np.isfinite(flux.sum()) and np.isfinite(ivar_arr.sum()):
            if flagged is not None:
                np.copyto(ivar_arr, 0.0, where=flagged)
        else:
            bad_flux = ~np.isfinite(flux)
            invalid = bad_flux | ~np.isfinite(ivar_arr)
            if flagged is not None:
                invalid &= ~flagged  # counted as repaired: invalid pixels not already flagged
            n_repaired = int(np.count_nonzero(invalid))
            if n_repaired:
                logger.info(
                    "SpectralDataset: masked %d pixels with non-finite flux or uncertainty.",
                    n_repaired,
                )
            np.copyto(flux, 0.0, where=bad_flux)
            np.copyto(ivar_arr, 0.0, where=invalid if flagged is None else invalid | flagged)

        if wavelength is not None:
            wavelength = as_float_array(wavelength, "wavelength").copy()
            check_shape(wavelength, (n_pixels,), "wavelength", f"one value per pixel of {spectra_shape}")
            if n_pixels > 1 and not np.all(np.diff(wavelength) > 0):
                raise ValueError("`wavelength` must be strictly increasing (Å, one per pixel).")
            wavelength = _frozen(wavelength)

        names: tuple[str, ...] = ()
        if labels is not None:
            labels = as_float_array(labels, "labels").copy()
            if labels.ndim == 1:
                labels = labels[:, None]
            check_shape(labels, (n_stars, None), "labels", f"one row per star of {spectra_shape}")
            if label_names is None:
                raise ValueError(
                    "`label_names` is required with `labels`: name each column,"
                    " e.g. label_names=('teff', 'logg', 'm_h')."
                )
            names = check_label_names(label_names, labels.shape[1])
            labels[~np.isfinite(labels)] = np.nan
            labels = _frozen(labels)
        elif label_names is not None and len(label_names) > 0:
            raise ValueError(
                f"`label_names` {tuple(label_names)} were given without `labels`; pass the label array too."
            )

        if label_err is not None:
            if labels is None:
                raise ValueError("`label_err` was given without `labels`.")
            label_err = as_float_array(label_err, "label_err").copy()
            if label_err.ndim == 1:
                label_err = label_err[:, None]
            check_shape(label_err, labels.shape, "label_err", f"matching `labels` {labels.shape}")
            if np.any(label_err < 0):
                raise ValueError("`label_err` has negative values; uncertainties must be >= 0.")
            label_err = _frozen(label_err)

        if ids is None:
            id_array = np.array([str(i) for i in range(n_stars)])
        else:
            id_array = np.asarray([str(i) for i in np.asarray(ids).ravel()])
            if id_array.shape != (n_stars,):
                raise ValueError(f"`ids` has {id_array.shape[0]} entries but `flux` has {n_stars} stars.")
            if len(np.unique(id_array)) != n_stars:
                values, counts = np.unique(id_array, return_counts=True)
                raise ValueError(f"`ids` must be unique; repeated: {list(values[counts > 1][:5])}.")

        setter = object.__setattr__
        setter(self, "flux", _frozen(flux))
        setter(self, "ivar", _frozen(ivar_arr))
        setter(self, "_mask", None)
        setter(self, "wavelength", wavelength)
        setter(self, "labels", labels)
        setter(self, "label_names", names)
        setter(self, "label_err", label_err)
        setter(self, "ids", _frozen(id_array))
        setter(self, "meta", MappingProxyType(dict(meta or {})))
        setter(self, "n_repaired", n_repaired)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"SpectralDataset is immutable; use .replace({name}=...) to get a modified copy."
        )

    # ----------------------------------------------------------------- properties
    @property
    def n_stars(self) -> int:
        """Number of spectra (rows)."""
        return self.flux.shape[0]

    @property
    def n_pixels(self) -> int:
        """Number of pixels per spectrum."""
        return self.flux.shape[1]

    @property
    def n_labels(self) -> int:
        """Number of label columns (0 without labels)."""
        return len(self.label_names)

    @property
    def mask(self) -> np.ndarray:
        """Bad pixels, bool (stars, pixels): ``ivar == 0``.

        Pixels flagged in the ``mask`` given at construction, and repaired non-finite
        ones, had their ``ivar`` set to 0 then, so this is the union of all of them.
        Formed on first access (a pass over ``ivar``): streaming inference reads
        ``ivar`` alone and never pays for it.
        """
        mask = self._mask
        if mask is None:
            # Two threads racing here compute the same array; either may win.
            mask = _frozen(self.ivar == 0)
            object.__setattr__(self, "_mask", mask)
        return mask

    @property
    def flux_err(self) -> np.ndarray:
        """1-σ flux uncertainties, shape (stars, pixels); ``inf`` where ``ivar == 0``."""
        with np.errstate(divide="ignore"):
            return 1.0 / np.sqrt(self.ivar)

    def __len__(self) -> int:
        return self.n_stars

    def __repr__(self) -> str:
        labels = ", ".join(self.label_names) or "none"
        return (
            f"SpectralDataset(stars={self.n_stars}, pixels={self.n_pixels}, labels=[{labels}],"
            f" masked={self.mask.mean():.1%})"
        )

    # ----------------------------------------------------------------- access
    def label(self, name: str) -> np.ndarray:
        """Column of the label called ``name``, shape (stars,)."""
        return self.labels[:, self.label_index(name)]  # type: ignore[index]

    def label_index(self, name: str) -> int:
        """Column index of label ``name``; raises ``KeyError`` listing the known names."""
        if name not in self.label_names:
            raise KeyError(f"unknown label {name!r}; this dataset has labels {list(self.label_names)}.")
        return self.label_names.index(name)

    def select_labels(self, names: Sequence[str]) -> SpectralDataset:
        """Keep only the label columns ``names``, in that order."""
        if self.labels is None:
            raise ValueError("this dataset has no labels to select from.")
        columns = [self.label_index(n) for n in names]
        return self.replace(
            labels=self.labels[:, columns],
            label_names=tuple(names),
            label_err=None if self.label_err is None else self.label_err[:, columns],
        )

    def __getitem__(self, index: Any) -> SpectralDataset:
        """Row selection by int, slice, integer array or boolean mask over stars."""
        if isinstance(index, tuple):
            raise IndexError("SpectralDataset indexes stars only (rows); use select_labels for columns.")
        rows = np.arange(self.n_stars)[index]
        rows = np.atleast_1d(rows)
        return self._take(rows)

    def _take(self, rows: np.ndarray) -> SpectralDataset:
        return SpectralDataset(
            self.flux[rows],
            ivar=self.ivar[rows],
            mask=self.mask[rows],
            wavelength=self.wavelength,
            labels=None if self.labels is None else self.labels[rows],
            label_names=self.label_names if self.labels is not None else None,
            label_err=None if self.label_err is None else self.label_err[rows],
            ids=self.ids[rows],
            meta=self.meta,
        )

    def replace(self, **changes: Any) -> SpectralDataset:
        """Copy with some fields replaced (``flux_err`` replaces ``ivar``)."""
        fields: dict[str, Any] = {
            "flux": self.flux,
            "ivar": self.ivar,
            "mask": self.mask,
            "wavelength": self.wavelength,
            "labels": self.labels,
            "label_names": self.label_names if self.labels is not None else None,
            "label_err": self.label_err,
            "ids": self.ids,
            "meta": self.meta,
        }
        if "flux_err" in changes:
            fields.pop("ivar")
        unknown = set(changes) - set(fields) - {"flux_err"}
        if unknown:
            raise TypeError(f"replace() got unknown fields {sorted(unknown)}.")
        fields.update(changes)
        if fields.get("labels") is None:
            fields["label_names"] = None
            fields["label_err"] = None
        flux = fields.pop("flux")
        return SpectralDataset(flux, **fields)

    def split(self, test_fraction: float = 0.2, *, seed: int = 0) -> tuple[SpectralDataset, SpectralDataset]:
        """Random train/test split of the stars, reproducible from ``seed``.

        Returns
        -------
        (train, test) : tuple of SpectralDataset
            Disjoint; together they hold every star once.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
        order = np.random.default_rng(seed).permutation(self.n_stars)
        n_test = max(1, round(test_fraction * self.n_stars))
        if n_test >= self.n_stars:
            raise ValueError(f"cannot split {self.n_stars} stars with test_fraction={test_fraction}.")
        return self._take(np.sort(order[n_test:])), self._take(np.sort(order[:n_test]))

    def checksum(self) -> str:
        """SHA-256 (hex) of the data a model learns from: flux, ivar, labels, names, ids.

        Two datasets with equal arrays (bit for bit), label names and ids have the same
        checksum, whatever file they came from; ``meta`` and wavelength are not included.
        Model files record it (:func:`starlabel.models.save_model`'s ``training_set``).
        """
        import hashlib

        digest = hashlib.sha256()
        arrays = {"flux": self.flux, "ivar": self.ivar, "labels": self.labels, "ids": self.ids}
        for name, array in arrays.items():
            if array is None:
                continue
            array = np.ascontiguousarray(array)
            if array.dtype.kind == "U":
                array = np.char.encode(array, "utf-8")
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.data)  # its buffer: the bytes of tobytes(), without the copy
        digest.update(("label_names:" + ",".join(self.label_names)).encode())
        return digest.hexdigest()

    def same_grid(self, other: SpectralDataset) -> bool:
        """Whether ``other`` has the same pixels: their number and wavelengths (or neither has any)."""
        if other.n_pixels != self.n_pixels or (other.wavelength is None) != (self.wavelength is None):
            return False
        if other.wavelength is None or self.wavelength is None:
            return True  # neither has wavelengths (they agree on having them, above)
        return bool(np.allclose(other.wavelength, self.wavelength))

    @staticmethod
    def concatenate(
        datasets: Sequence[SpectralDataset], *, ids: Sequence[Any] | np.ndarray | None = None
    ) -> SpectralDataset:
        """Stack datasets along stars; pixel grids and label names must agree.

        ``ids`` replaces the stacked star ids (one per star; default: the datasets' own,
        which must then be unique across them).
        """
        if not datasets:
            raise ValueError("concatenate needs at least one dataset.")
        first = datasets[0]
        for i, ds in enumerate(datasets[1:], start=1):
            if ds.n_pixels != first.n_pixels:
                raise ValueError(
                    f"dataset {i} has {ds.n_pixels} pixels but dataset 0 has {first.n_pixels};"
                    " resample onto a common grid first."
                )
            if not first.same_grid(ds):
                raise ValueError(f"dataset {i} has a different wavelength grid from dataset 0.")
            if ds.label_names != first.label_names:
                raise ValueError(
                    f"dataset {i} has labels {ds.label_names} but dataset 0 has"
                    f" {first.label_names}; use select_labels to align them."
                )
            if (ds.label_err is None) != (first.label_err is None):
                raise ValueError(f"dataset {i} and dataset 0 disagree on having label_err.")
        has_labels = first.labels is not None
        # Straight into aligned buffers that the new dataset adopts; no mask is passed
        # because every flagged pixel already has ivar = 0 (see ``mask``).
        shape = (sum(d.n_stars for d in datasets), first.n_pixels)
        flux, ivar = empty_aligned(shape), empty_aligned(shape)
        np.concatenate([d.flux for d in datasets], out=flux)
        np.concatenate([d.ivar for d in datasets], out=ivar)
        return SpectralDataset(
            flux,
            ivar=ivar,
            copy=False,
            wavelength=first.wavelength,
            # The checks above make every dataset agree with the first on having labels
            # (same label names) and label_err, so the filters below drop nothing.
            labels=np.concatenate([d.labels for d in datasets if d.labels is not None])
            if has_labels
            else None,
            label_names=first.label_names if has_labels else None,
            label_err=(
                np.concatenate([d.label_err for d in datasets if d.label_err is not None])
                if first.label_err is not None
                else None
            ),
            ids=np.concatenate([d.ids for d in datasets]) if ids is None else ids,
            meta=first.meta,
        )
