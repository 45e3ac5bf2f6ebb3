"""Sphinx configuration (build with `pip install -e .[docs] && sphinx-build docs docs/_build`)."""

project = 'aiida-alkit'
extensions = ['myst_parser']
source_suffix = {'.md': 'markdown'}
master_doc = 'index'
html_theme = 'alabaster'
