"""Lux: a multi-output latent-variable model with learned error models.

Every star has latents z ~ N(0, I); labels, flux and any registered output are
transforms of z with their own error models. See :class:`Lux` and ``docs/lux.md``.
"""

from ._error_models import AbstractErrorModel as AbstractErrorModel
from ._error_models import AbstractScatter as AbstractScatter
from ._error_models import FunctionErrorModel as FunctionErrorModel
from ._error_models import NoScatter as NoScatter
from ._error_models import PixelScatter as PixelScatter
from ._error_models import ScalarScatter as ScalarScatter
from ._fitted import FittedLux as FittedLux
from ._fitted import LuxFitInfo as LuxFitInfo
from ._model import Lux as Lux
from ._objective import LuxOutput as LuxOutput
from ._objective import joint_objective as joint_objective
from ._objective import marginal_objective as marginal_objective
from ._prepare import OutputData as OutputData
from ._transforms import AbstractAffineTransform as AbstractAffineTransform
from ._transforms import AbstractTransform as AbstractTransform
from ._transforms import AffineTransform as AffineTransform
from ._transforms import FunctionTransform as FunctionTransform
from ._transforms import LinearTransform as LinearTransform
from ._transforms import MLPTransform as MLPTransform
from ._transforms import PolynomialTransform as PolynomialTransform
