"""Evaluation: label metrics, comparison tables and diagnostic plots.

Metrics load with the package; plots and the HTML report (matplotlib) load on first use.
"""

from typing import TYPE_CHECKING

from .._internal._lazy import lazy_exports
from ._against import evaluate_against as evaluate_against
from ._against import match_by_id as match_by_id
from ._metrics import LabelMetrics as LabelMetrics
from ._metrics import MetricsTable as MetricsTable
from ._metrics import compare_models as compare_models
from ._metrics import format_metrics as format_metrics
from ._metrics import label_metrics as label_metrics

if TYPE_CHECKING:
    from ._cannon_plots import plot_cannon_derivatives as plot_cannon_derivatives
    from ._cannon_plots import plot_cannon_scatter as plot_cannon_scatter
    from ._mixture_plots import plot_line_fit as plot_line_fit
    from ._mixture_plots import plot_membership as plot_membership
    from ._mixture_plots import plot_parallax_components as plot_parallax_components
    from ._mixture_plots import plot_pm_membership as plot_pm_membership
    from ._plots import find_kiel_labels as find_kiel_labels
    from ._plots import plot_kiel as plot_kiel
    from ._plots import plot_one_to_one as plot_one_to_one
    from ._plots import plot_residuals as plot_residuals
    from ._plots import plot_spectrum as plot_spectrum
    from ._report import write_report as write_report
    from ._uncertainty_plots import plot_posterior_corner as plot_posterior_corner
    from ._uncertainty_plots import plot_uncertainty_vs_snr as plot_uncertainty_vs_snr
    from ._uncertainty_plots import plot_zscore_comparison as plot_zscore_comparison
    from ._uncertainty_plots import plot_zscore_histograms as plot_zscore_histograms
    from ._uncertainty_plots import zscore_summary as zscore_summary

__getattr__, __dir__ = lazy_exports(__name__, __file__)
