"""Exploration: (uncertainty-biased) molecular dynamics, walkers, stop criteria, candidate pools. No AiiDA import."""
