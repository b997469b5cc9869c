"""Mixture models: outlier-robust likelihoods, membership probabilities, cluster/field fits.

Building blocks (components observed through Gaussian errors, mixtures combined with
logsumexp, membership over posterior samples), the straight-line-with-outliers model,
the cluster membership model for Gaia astrometry and its table interface, and the
robust Cannon. See ``docs/mixtures.md``.
"""

from ._cluster import ClusterFit as ClusterFit
from ._cluster import fit_cluster_membership as fit_cluster_membership
from ._components import AbstractComponent as AbstractComponent
from ._components import FromDistribution as FromDistribution
from ._components import Gaussian as Gaussian
from ._components import GaussianMixture as GaussianMixture
from ._components import Uniform as Uniform
from ._components import gaussian_log_prob as gaussian_log_prob
from ._line import LineFit as LineFit
from ._line import LineSimulation as LineSimulation
from ._line import fit_line_with_outliers as fit_line_with_outliers
from ._line import simulate_line_with_outliers as simulate_line_with_outliers
from ._mixture import Membership as Membership
from ._mixture import Mixture as Mixture
from ._mixture import membership_probabilities as membership_probabilities
from ._mixture import mixture_factor as mixture_factor
from ._mixture import posterior_membership as posterior_membership
from ._mixture import sample_weights as sample_weights
from ._robust_cannon import RobustCannonFit as RobustCannonFit
from ._robust_cannon import RobustInference as RobustInference
from ._robust_cannon import fit_robust_cannon as fit_robust_cannon
from ._robust_cannon import infer_robust as infer_robust
from ._simulate import ClusterSimulation as ClusterSimulation
from ._simulate import simulate_cluster_field as simulate_cluster_field
from ._table import MembershipResult as MembershipResult
from ._table import fit_membership_table as fit_membership_table
from ._table import read_table as read_table
