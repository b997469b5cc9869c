"""The Payne: a neural network from stellar labels to the whole normalised spectrum.

Ting et al. (2019). Train on observed stars or on a synthetic grid; the test step fits
labels by χ² with the network's Jacobian, through the generic flux-model interface,
so radial-velocity and continuum fits, Laplace/NUTS uncertainties and the cross-
validated error calibration work as for the Cannon. See ``docs/payne.md``.
"""

from ._flux_model import PayneSpectrum as PayneSpectrum
from ._model import FittedPayne as FittedPayne
from ._model import Payne as Payne
from ._network import PayneNetwork as PayneNetwork
