"""Kalman Prediction Uncertainty (seed 000, Definition 3.1, Algorithms 2-3).

KPU needs the trained RLEKF covariance P, so it is implemented next to the optimizer in
:mod:`aiida_alkit.models.rlekf`; this module is its home in the uncertainty package. The ALKPU selection window
built on it is :func:`aiida_alkit.selection.windows.alkpu_window`.
"""

from aiida_alkit.models.rlekf import kalman_prediction_uncertainty, kpu_trained

__all__ = ['kalman_prediction_uncertainty', 'kpu_trained']
