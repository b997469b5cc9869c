"""The chunk plan: which rows of which file make up each unit of work.

A chunk is a contiguous row range of one input file. The plan depends only on the
input list (in order), each file's number of stars, and the chunk size, so the same
command always produces the same chunks with the same names. That determinism is
what makes resume exactly-once: a chunk's result is written under its own name, at
most one such file can exist, and the merge reads each planned chunk once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._inputs import InputFile

__all__ = ["ChunkSpec", "plan_chunks"]


@dataclass(frozen=True)
class ChunkSpec:
    """Rows ``[start, stop)`` of input file number ``file_index``.

    Attributes
    ----------
    file_index : int
        Position of the file in the run's input list.
    chunk_index : int
        Position of the chunk within its file.
    path : str
        The file's path (workers open it themselves, so it must be visible to them).
    start, stop : int
        Row range.
    """

    file_index: int
    chunk_index: int
    path: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        """Stable file-name stem for this chunk's part and error records."""
        return f"f{self.file_index:05d}-c{self.chunk_index:06d}"

    @property
    def n_stars(self) -> int:
        """Number of spectra in the chunk."""
        return self.stop - self.start


def plan_chunks(inputs: Sequence[InputFile], chunk_size: int) -> list[ChunkSpec]:
    """Split every readable input file into chunks of at most ``chunk_size`` spectra.

    Unreadable files (``n_stars < 0``) get no chunks; they are reported as file errors.

    Parameters
    ----------
    inputs : sequence of InputFile
    chunk_size : int
        Maximum spectra per chunk (≥ 1).

    Returns
    -------
    list of ChunkSpec
        In file order, then row order.
    """
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be ≥ 1, got {chunk_size}.")
    chunks = []
    for file_index, item in enumerate(inputs):
        for chunk_index, start in enumerate(range(0, max(item.n_stars, 0), chunk_size)):
            stop = min(start + chunk_size, item.n_stars)
            chunks.append(ChunkSpec(file_index, chunk_index, item.path, start, stop))
    return chunks
