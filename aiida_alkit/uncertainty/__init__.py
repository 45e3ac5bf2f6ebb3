"""Uncertainty estimates: gradient features, GP posterior, committee deviation, KPU, D-optimality, conformal calibration. No AiiDA import."""
