"""The chunk plan: which rows of which files make up each unit of work.

The input files are read as one stream of rows, in input order, and cut every
``chunk_size`` rows. A chunk is therefore one or more :class:`Segment` values —
contiguous row ranges of consecutive files — and every chunk but the last is full:
a survey stored as thousands of small files (one plate, one star per file) still
reaches the model in full batches, and a large file's last rows share a chunk with
the next file instead of going through the model as a short, padded batch.

The plan depends only on the input list (in order), each file's number of stars, and
the chunk size, so the same command always produces the same chunks with the same
names. That determinism is what makes resume exactly-once: a chunk's result is
written under its own name, at most one such file can exist, and the merge reads
each planned chunk once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data import InputFile

__all__ = ["ChunkSpec", "Segment", "plan_chunks", "CHUNK_PLAN"]

CHUNK_PLAN = "packed"
"""Name of this plan, recorded in run manifests: a run directory written under another
plan (before chunks spanned files, part names differed) is not resumed."""


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of input file number ``file_index``.

    Attributes
    ----------
    file_index : int
        Position of the file in the run's input list.
    path : str
        The file's path (workers open it themselves, so it must be visible to them).
    start, stop : int
        Row range.
    """

    file_index: int
    path: str
    start: int
    stop: int

    @property
    def n_stars(self) -> int:
        """Number of spectra in the segment."""
        return self.stop - self.start

    @property
    def rows(self) -> str:
        """``"start-stop"``, as the errors report writes it."""
        return f"{self.start}-{self.stop}"


@dataclass(frozen=True)
class ChunkSpec:
    """Chunk number ``index`` of a plan: its segments, in input order.

    Attributes
    ----------
    index : int
        Position of the chunk in the plan.
    segments : tuple of Segment
        Row ranges of consecutive input files (at least one).
    """

    index: int
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a chunk needs at least one segment.")

    @property
    def name(self) -> str:
        """Stable file-name stem for this chunk's part and error records."""
        return f"c{self.index:07d}"

    @property
    def n_stars(self) -> int:
        """Number of spectra in the chunk."""
        return sum(segment.n_stars for segment in self.segments)


def plan_chunks(inputs: Sequence[InputFile], chunk_size: int) -> list[ChunkSpec]:
    """Cut the rows of every readable input file, in order, into chunks of ``chunk_size``.

    Unreadable files (``n_stars < 0``) and empty ones get no segments; unreadable ones
    are reported as file errors.

    Parameters
    ----------
    inputs : sequence of InputFile
    chunk_size : int
        Spectra per chunk (≥ 1); only the last chunk may hold fewer.

    Returns
    -------
    list of ChunkSpec
        In input order; segments within a chunk in input order too.
    """
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be ≥ 1, got {chunk_size}.")
    chunks: list[ChunkSpec] = []
    current: list[Segment] = []
    room = chunk_size
    for file_index, item in enumerate(inputs):
        start = 0
        while start < item.n_stars:
            stop = min(start + room, item.n_stars)
            current.append(Segment(file_index, item.path, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                chunks.append(ChunkSpec(len(chunks), tuple(current)))
                current, room = [], chunk_size
    if current:
        chunks.append(ChunkSpec(len(chunks), tuple(current)))
    return chunks
