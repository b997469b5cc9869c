"""Semi-public helpers shared across subpackages (unstable; see README.md).

Names load on first use (``_lazy.py``): the command line imports this package before
it parses arguments, and ``--help`` should not wait for numpy or JAX.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from ._aligned import ALIGNMENT as ALIGNMENT
    from ._aligned import aligned_copy as aligned_copy
    from ._aligned import as_aligned as as_aligned
    from ._aligned import empty_aligned as empty_aligned
    from ._aligned import is_aligned as is_aligned
    from ._atomic import atomic_path as atomic_path
    from ._atomic import partial_path as partial_path
    from ._atomic import write_json_atomic as write_json_atomic
    from ._chunks import map_chunks as map_chunks
    from ._chunks import repeat_first_row as repeat_first_row
    from ._chunks import usable_cpus as usable_cpus
    from ._folds import fold_indices as fold_indices
    from ._folds import fold_of as fold_of
    from ._precision import x64 as x64
    from ._validate import as_float_array as as_float_array
    from ._validate import check_label_names as check_label_names
    from ._validate import check_shape as check_shape
    from ._validate import numeric_label as numeric_label
    from ._validate import require as require

__getattr__, __dir__ = lazy_exports(__name__, __file__)
