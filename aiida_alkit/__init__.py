"""aiida-alkit: active learning of machine-learned interatomic potentials with full AiiDA provenance.

The science core (``models``, ``uncertainty``, ``selection``, ``exploration``, ``io``, ``jobs``) is plain
PyTorch/NumPy/ASE; the AiiDA layer (``data``, ``calculations``, ``parsers``, ``workflows``, ``cli``) turns it into
provenance-tracked processes.
"""

__version__ = '0.1.0'
