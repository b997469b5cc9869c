"""Survey-scale inference: chunked, streaming, resumable, on one machine or a Ray cluster.

The pipeline drives a fitted model's ``infer`` over many files; it contains no model
maths. Entry point: :func:`run_inference`. See ``docs/scaling.md``.
"""

from ..data import InputFile as InputFile
from ..data import RowSource as RowSource
from ..data import RunManifest as RunManifest
from ..data import RunMismatchError as RunMismatchError
from ..data import open_rows as open_rows
from ..data import read_manifest as read_manifest
from ..data import read_run as read_run
from ._chunks import ChunkSpec as ChunkSpec
from ._chunks import Segment as Segment
from ._chunks import plan_chunks as plan_chunks
from ._engine import AbstractEngine as AbstractEngine
from ._engine import LocalEngine as LocalEngine
from ._engine import WorkerSpec as WorkerSpec
from ._engine_choice import resolve_engine as resolve_engine
from ._engine_ray import RayEngine as RayEngine
from ._inputs import describe_inputs as describe_inputs
from ._inputs import resolve_inputs as resolve_inputs
from ._parts import ERRORS_NAME as ERRORS_NAME
from ._run import RunSummary as RunSummary
from ._run import run_dir_for as run_dir_for
from ._run import run_inference as run_inference
from ._worker import REFERENCE_PREFIX as REFERENCE_PREFIX
from ._worker import ChunkOutcome as ChunkOutcome
