"""Spectral data: the dataset container, scalers, file IO, results, simulators.

Everything here but :class:`ShiftScale` needs only numpy; ``ShiftScale`` (an Equinox
module) loads on first use, so reading and writing files does not import JAX.
"""

from typing import TYPE_CHECKING

from .._internal._lazy import lazy_exports
from ._dataset import SpectralDataset as SpectralDataset
from ._io import DATASET_SUFFIXES as DATASET_SUFFIXES
from ._io import read_dataset as read_dataset
from ._io import write_dataset as write_dataset
from ._linelist import LineList as LineList
from ._lines import LINE_ELEMENTS as LINE_ELEMENTS
from ._lines import LINE_LABELS as LINE_LABELS
from ._lines import LINE_TRUTH as LINE_TRUTH
from ._lines import LineSimulation as LineSimulation
from ._lines import simulate_lines as simulate_lines
from ._result import PROVENANCE_KEY as PROVENANCE_KEY
from ._result import RESULT_SUFFIXES as RESULT_SUFFIXES
from ._result import Flag as Flag
from ._result import InferenceResult as InferenceResult
from ._result import read_result as read_result
from ._rows import RowSource as RowSource
from ._rows import open_rows as open_rows
from ._runs import MANIFEST_NAME as MANIFEST_NAME
from ._runs import SUMMARY_NAME as SUMMARY_NAME
from ._runs import InputFile as InputFile
from ._runs import RunCounts as RunCounts
from ._runs import RunManifest as RunManifest
from ._runs import RunMismatchError as RunMismatchError
from ._runs import read_manifest as read_manifest
from ._runs import read_run as read_run
from ._runs import read_run_counts as read_run_counts
from ._shared import SHARED_DATA_ENV as SHARED_DATA_ENV
from ._shared import shared_data_dir as shared_data_dir
from ._simulate import STELLAR_LABELS as STELLAR_LABELS
from ._simulate import CannonSimulation as CannonSimulation
from ._simulate import LatentSimulation as LatentSimulation
from ._simulate import simulate_cannon as simulate_cannon
from ._simulate import simulate_linear_latent as simulate_linear_latent
from ._tables import TABLE_FORMATS as TABLE_FORMATS
from ._tables import arrow_table as arrow_table
from ._tables import read_table_file as read_table_file
from ._tables import write_table_file as write_table_file

if TYPE_CHECKING:
    from ._scaler import ShiftScale as ShiftScale

__getattr__, __dir__ = lazy_exports(__name__, __file__)
