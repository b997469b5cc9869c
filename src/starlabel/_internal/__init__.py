"""Semi-public helpers shared across subpackages (unstable; see README.md)."""

from ._precision import x64 as x64
from ._validate import (
    as_float_array as as_float_array,
)
from ._validate import (
    check_label_names as check_label_names,
)
from ._validate import (
    check_shape as check_shape,
)
