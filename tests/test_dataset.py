import numpy as np
import pytest

from starlabel.data import SpectralDataset


def make(n=5, p=4, **kwargs):
    rng = np.random.default_rng(1)
    base = dict(
        flux=rng.normal(1.0, 0.01, (n, p)),
        flux_err=np.full((n, p), 0.01),
        labels=rng.normal(size=(n, 2)),
        label_names=("teff", "logg"),
    )
    base.update(kwargs)
    flux = base.pop("flux")
    return SpectralDataset(flux, **base)


def test_basic_properties_and_ivar():
    ds = make()
    assert (ds.n_stars, ds.n_pixels, ds.n_labels) == (5, 4, 2)
    np.testing.assert_allclose(ds.ivar, 1e4)
    np.testing.assert_allclose(ds.flux_err, 0.01)
    assert list(ds.ids) == ["0", "1", "2", "3", "4"]


def test_accepts_ivar_instead_of_flux_err():
    ds = SpectralDataset(np.ones((2, 3)), ivar=np.full((2, 3), 4.0))
    np.testing.assert_allclose(ds.flux_err, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(flux_err=np.ones((5, 3))), r"`flux_err` has shape \(5, 3\) but must have shape \(5, 4\)"),
        (dict(mask=np.zeros((4, 4), bool)), r"`mask` has shape \(4, 4\)"),
        (dict(wavelength=np.arange(3.0)), r"`wavelength` has shape \(3,\)"),
        (dict(labels=np.ones((4, 2))), r"`labels` has shape \(4, 2\)"),
        (dict(flux_err=-np.ones((5, 4))), "negative"),
        (dict(label_names=("teff",)), r"`label_names` has 1 entries"),
        (dict(label_names=("teff", "teff")), "repeats"),
        (dict(ids=["a"] * 5), "unique"),
        (dict(wavelength=np.array([4.0, 3.0, 2.0, 1.0])), "strictly increasing"),
    ],
)
def test_validation_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_flux_err_xor_ivar_and_string_label_names():
    with pytest.raises(TypeError, match="exactly one of `flux_err` or `ivar`"):
        SpectralDataset(np.ones((2, 2)))
    with pytest.raises(TypeError, match="exactly one of"):
        SpectralDataset(np.ones((2, 2)), flux_err=np.ones((2, 2)), ivar=np.ones((2, 2)))
    with pytest.raises(TypeError, match="not one string"):
        make(label_names="teff,logg")
    with pytest.raises(ValueError, match="negative values"):
        SpectralDataset(np.ones((2, 2)), ivar=-np.ones((2, 2)))
    with pytest.raises(TypeError, match="boolean"):
        make(mask=np.zeros((5, 4), dtype=int))


def test_non_finite_pixels_are_masked_and_counted():
    flux = np.ones((3, 4))
    err = np.full((3, 4), 0.1)
    flux[0, 1] = np.nan
    flux[1, 2] = np.inf
    err[2, 0] = np.inf  # infinite error -> ivar 0
    err[2, 3] = 0.0  # zero error -> infinite ivar -> masked
    ds = SpectralDataset(flux, flux_err=err)
    assert ds.n_repaired == 3  # nan flux, inf flux, zero error (inf ivar); inf err gives ivar 0
    expected = np.zeros((3, 4), bool)
    expected[0, 1] = expected[1, 2] = expected[2, 0] = expected[2, 3] = True
    np.testing.assert_array_equal(ds.mask, expected)
    assert np.all(ds.ivar[expected] == 0)
    assert np.all(np.isfinite(ds.flux))


def test_mask_forces_zero_ivar_and_nan_labels_allowed():
    mask = np.zeros((5, 4), bool)
    mask[0, 0] = True
    labels = np.ones((5, 2))
    labels[1, 1] = np.nan
    ds = make(mask=mask, labels=labels)
    assert ds.ivar[0, 0] == 0
    assert np.isnan(ds.labels[1, 1])


def test_immutability():
    ds = make()
    with pytest.raises(AttributeError, match="immutable"):
        ds.flux = np.zeros((5, 4))
    with pytest.raises(ValueError):
        ds.flux[0, 0] = 3.0


def test_indexing_split_concatenate_roundtrip():
    ds = make(n=20, ids=[f"s{i}" for i in range(20)])
    assert ds[3].n_stars == 1 and ds[3].ids[0] == "s3"
    assert ds[2:5].n_stars == 3
    assert ds[ds.labels[:, 0] > 0].n_stars == int(np.sum(ds.labels[:, 0] > 0))
    train, test = ds.split(0.25, seed=3)
    assert (train.n_stars, test.n_stars) == (15, 5)
    assert set(train.ids).isdisjoint(test.ids)
    again_train, _ = ds.split(0.25, seed=3)
    np.testing.assert_array_equal(train.ids, again_train.ids)
    merged = SpectralDataset.concatenate([train, test])
    order = np.argsort(merged.ids)
    np.testing.assert_array_equal(merged.flux[order], ds.flux[np.argsort(ds.ids)])


def test_concatenate_rejects_mismatches():
    with pytest.raises(ValueError, match="pixels"):
        SpectralDataset.concatenate([make(p=4), make(p=5, flux_err=np.ones((5, 5)))])
    other = make(label_names=("teff", "m_h"), ids=[f"x{i}" for i in range(5)])
    with pytest.raises(ValueError, match="labels"):
        SpectralDataset.concatenate([make(), other])


def test_select_labels_and_label_lookup():
    ds = make()
    sub = ds.select_labels(["logg"])
    assert sub.label_names == ("logg",)
    np.testing.assert_array_equal(sub.label("logg"), ds.labels[:, 1])
    with pytest.raises(KeyError, match="unknown label 'feh'"):
        ds.label("feh")


def test_replace_with_flux_err():
    ds = make()
    changed = ds.replace(flux_err=np.full((5, 4), 0.5))
    np.testing.assert_allclose(changed.ivar, 4.0)
    with pytest.raises(TypeError, match="unknown fields"):
        ds.replace(colour=1)
