"""PNG plots and Markdown of studies (``creditsweep report``): one module per kind of study.

``sweep`` (a sweep study's figures and summary.md), ``transfer`` (transfer studies over
depth), ``table`` (the method x depth table of transfer studies), ``robustness`` (accuracy
under noisy B updates); ``common`` holds what they share: the output folder's checks, atomic
writes, titles that name the data, chance and 90° lines, formatting. The numbers come from
``search.summaries``, which reads stored trials without importing Ray, so a report starts at
once. Importing this package imports matplotlib (headless); nothing else imports it.
"""

from search.reports.common import (
    CHANCE,
    RANDOM_B_ANGLE,
    chance_level,
    check_output_folder,
    data_line,
    figure_title,
    output_folder,
    parameter_label,
    parameter_order,
    plt,
    trial_counts,
    value_limits,
    write_atomic,
)
from search.reports.robustness import curvature_rule_figure, noise_figure, robustness_report
from search.reports.sweep import (
    SweepView,
    architectures_figure,
    curvature_figure,
    curves_figure,
    history_figure,
    importance_figure,
    param_importances,
    relaxation_figure,
    scatter_figure,
    slice_figure,
    study_report,
    trial_curve,
)
from search.reports.table import TableCell, method_table, table_report
from search.reports.transfer import (
    TransferSet,
    accuracy_depth_figure,
    curvature_depth_figure,
    layer_angle_figure,
    transfer_report,
)

__all__ = [
    "CHANCE", "RANDOM_B_ANGLE", "SweepView", "TableCell", "TransferSet",
    "accuracy_depth_figure", "architectures_figure", "chance_level", "check_output_folder",
    "curvature_depth_figure", "curvature_figure", "curvature_rule_figure", "curves_figure",
    "data_line", "figure_title", "history_figure", "importance_figure", "layer_angle_figure",
    "method_table", "noise_figure", "output_folder", "param_importances", "parameter_label",
    "parameter_order", "plt", "relaxation_figure", "robustness_report", "scatter_figure",
    "slice_figure", "study_report", "table_report", "transfer_report", "trial_counts",
    "trial_curve", "value_limits", "write_atomic",
]
