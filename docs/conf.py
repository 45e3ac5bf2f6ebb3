"""Sphinx configuration of the aiida-alkit documentation (MyST markdown; build with ``bash scripts/docs.sh``)."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package is installed in editable mode; this only helps a bare checkout

# Autodoc imports the package, and with it aiida-core, which creates a config folder under AIIDA_PATH on first use
# (and `aiida_alkit.cli` points AIIDA_PATH at the project's embedded profile when it is unset). The documentation
# needs no profile: give it an empty, throw-away config folder so that building never touches a real one.
os.environ['AIIDA_PATH'] = tempfile.mkdtemp(prefix='alkit-docs-aiida-')
atexit.register(shutil.rmtree, os.environ['AIIDA_PATH'], ignore_errors=True)

from aiida_alkit import __version__  # noqa: E402

# -- project --------------------------------------------------------------------------------------------------------
project = 'aiida-alkit'
author = 'aiida-alkit developers'
copyright = 'aiida-alkit developers'
version = release = __version__

# -- general --------------------------------------------------------------------------------------------------------
extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.viewcode',
    'sphinx.ext.mathjax',
    'sphinx_click',
]
source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']
language = 'en'
pygments_style = 'sphinx'
# Keep ``--option`` and ``...`` as typed: the CLI reference renders click help texts, where "--plot" must not
# become an en dash.
smartquotes = False

# -- MyST -----------------------------------------------------------------------------------------------------------
myst_enable_extensions = ['colon_fence', 'dollarmath', 'amsmath', 'deflist', 'attrs_inline']
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- autodoc --------------------------------------------------------------------------------------------------------
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'  # the signatures name numpy/torch/AiiDA types that this documentation does not describe
# members and undoc-members are given on each automodule directive: a default here would override an explicit list
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # AiiDA's base classes document their own API, not ours
autoclass_content = 'class'
# No napoleon: the docstrings use reST field lists (``:param x:``), no Google/NumPy sections, and napoleon would read
# a ``#:`` comment of the form "Some words: more words" as "type: description".

# -- cross references -----------------------------------------------------------------------------------------------
# Nitpicky mode: every reference must resolve. References into other projects (no intersphinx: the build must work
# offline) are ignored by package prefix; a broken reference to this package's own objects still fails the build.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(aiida|ase|numpy|np|torch|scipy|click|pymatgen|vesin|bmdal_reg|plumpy|yaml)(\..*)?'),
]

# -- HTML -----------------------------------------------------------------------------------------------------------
html_theme = 'alabaster'
html_title = f'aiida-alkit {release}'
html_theme_options = {
    'description': 'Active learning of interatomic potentials with AiiDA provenance',
    'fixed_sidebar': True,
    'page_width': '1100px',
    'sidebar_width': '250px',
}
html_sidebars = {'**': ['about.html', 'navigation.html', 'relations.html', 'searchbox.html']}
html_static_path: list[str] = []
html_show_sourcelink = False


# -- docstring fixes ------------------------------------------------------------------------------------------------
# Docstrings of the package that are not valid reST, mended here (exact text, so each entry turns into a no-op once
# the docstring itself is fixed): ``|x|`` outside literals is a substitution reference, ``*.cfg`` opens an emphasis,
# and a role may not be broken across two lines.
def _resolve_short_reference(app, env, node, contnode):
    """Resolve a Python reference by the end of its dotted name when the usual lookup failed.

    The docstrings name objects of sibling modules by their short names (``:class:`ConfigurationArrays``` in
    ``aiida_alkit.data.dataset``), which Sphinx looks up only in the current module and class. Here such a name is
    matched against the objects documented in this build: a unique match, or the one sharing the longest dotted
    prefix with the referring module, is linked; anything else stays a (nitpicky) warning.
    """
    if node.get('refdomain') != 'py':
        return None
    from sphinx.util.nodes import make_refnode

    target = node['reftarget'].lstrip('~.')
    domain = env.get_domain('py')
    objtypes = set(domain.objtypes_for_role(node['reftype']) or ())
    matches = [
        name
        for name, entry in domain.objects.items()
        if (name == target or name.endswith('.' + target)) and entry.objtype in objtypes and not entry.aliased
    ]
    if not matches:
        return None
    module = (node.get('py:module') or '').split('.')

    def shared(name: str) -> int:
        """Number of leading dotted components ``name`` has in common with the referring module."""
        count = 0
        for mine, theirs in zip(name.split('.'), module, strict=False):
            if mine != theirs:
                break
            count += 1
        return count

    matches.sort(key=shared, reverse=True)
    if len(matches) > 1 and shared(matches[0]) == shared(matches[1]):
        return None  # ambiguous: leave the warning
    entry = domain.objects[matches[0]]
    return make_refnode(app.builder, node['refdoc'], entry.docname, entry.node_id, contnode, matches[0])


def setup(app):
    app.connect('missing-reference', _resolve_short_reference)
