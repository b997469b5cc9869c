"""Real survey spectra: APOGEE readers, grids, bitmasks, quality cuts, continuum normalisation.

The one entry point most users need is :func:`prepare`, which turns apStar/aspcapStar
files (plus an optional allStar catalogue) into a normalised
:class:`~starlabel.data.SpectralDataset` and a report of every step. The pieces are
public too: readers (:func:`read_apstar`, :func:`read_aspcapstar`, :func:`read_allstar`,
the generic readers and the :data:`SPECTRUM_FORMATS` table), grids
(:data:`GRIDS`), masks (:func:`mask_pixels`), cuts (:class:`QualityCuts`) and continuum
methods (:class:`SinesAndCosines`, :class:`Polynomial`, :class:`RunningQuantile`).
See ``docs/survey.md``.
"""

from ._apogee import ASPCAP_PARAM_NAMES as ASPCAP_PARAM_NAMES
from ._apogee import AllStarTable as AllStarTable
from ._apogee import JoinSummary as JoinSummary
from ._apogee import apogee_id_from_name as apogee_id_from_name
from ._apogee import join_allstar as join_allstar
from ._apogee import read_allstar as read_allstar
from ._apogee import read_apstar as read_apstar
from ._apogee import read_aspcapstar as read_aspcapstar
from ._aspcap_windows import ASPCAP_WINDOW_ELEMENTS as ASPCAP_WINDOW_ELEMENTS
from ._aspcap_windows import aspcap_censor as aspcap_censor
from ._aspcap_windows import aspcap_window_file as aspcap_window_file
from ._aspcap_windows import aspcap_window_masks as aspcap_window_masks
from ._aspcap_windows import aspcap_windows as aspcap_windows
from ._aspcap_windows import label_element as label_element
from ._bitmask import APOGEE_PIXMASK as APOGEE_PIXMASK
from ._bitmask import DEFAULT_BAD_BITS as DEFAULT_BAD_BITS
from ._bitmask import PixelMask as PixelMask
from ._bitmask import bad_from_bitmask as bad_from_bitmask
from ._bitmask import bitmask_value as bitmask_value
from ._bitmask import count_bits as count_bits
from ._bitmask import mask_pixels as mask_pixels
from ._continuum import CONTINUUM_METHODS as CONTINUUM_METHODS
from ._continuum import AbstractContinuum as AbstractContinuum
from ._continuum import ContinuumFit as ContinuumFit
from ._continuum import Polynomial as Polynomial
from ._continuum import RunningQuantile as RunningQuantile
from ._continuum import SinesAndCosines as SinesAndCosines
from ._continuum import continuum_normalise as continuum_normalise
from ._continuum import fit_continuum as fit_continuum
from ._continuum import resolve_continuum as resolve_continuum
from ._continuum_pixels import CONTINUUM_PIXELS_HELP as CONTINUUM_PIXELS_HELP
from ._continuum_pixels import find_continuum_pixels as find_continuum_pixels
from ._continuum_pixels import load_continuum_pixels as load_continuum_pixels
from ._cuts import ASPCAP_STAR_BAD as ASPCAP_STAR_BAD
from ._cuts import CutOutcome as CutOutcome
from ._cuts import QualityCuts as QualityCuts
from ._cuts import apply_quality_cuts as apply_quality_cuts
from ._generic import ArrayLayout as ArrayLayout
from ._generic import read_fits_spectra as read_fits_spectra
from ._generic import read_hdf5_spectra as read_hdf5_spectra
from ._generic import read_npz_spectra as read_npz_spectra
from ._grids import APSTAR_LOG10_START as APSTAR_LOG10_START
from ._grids import APSTAR_LOG10_STEP as APSTAR_LOG10_STEP
from ._grids import APSTAR_N_PIXELS as APSTAR_N_PIXELS
from ._grids import GRIDS as GRIDS
from ._grids import ApogeeGrid as ApogeeGrid
from ._grids import apstar_wavelength as apstar_wavelength
from ._grids import chip_regions as chip_regions
from ._grids import convert_pixel_mask as convert_pixel_mask
from ._grids import resolve_grid as resolve_grid
from ._prepare import PreparationReport as PreparationReport
from ._prepare import PreparationStep as PreparationStep
from ._prepare import prepare as prepare
from ._prepare import resolve_continuum_pixels as resolve_continuum_pixels
from ._registry import SPECTRUM_FORMATS as SPECTRUM_FORMATS
from ._registry import ReadOptions as ReadOptions
from ._registry import SkippedFile as SkippedFile
from ._registry import SpectrumFormat as SpectrumFormat
from ._registry import expand_inputs as expand_inputs
from ._registry import identify_format as identify_format
from ._registry import read_many as read_many
from ._registry import read_spectra as read_spectra
from ._spectra import SurveySpectra as SurveySpectra
from ._writers import write_allstar as write_allstar
from ._writers import write_apstar as write_apstar
