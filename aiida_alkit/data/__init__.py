"""AiiDA data types: :class:`DatasetData` (``alkit.dataset``) and :class:`PotentialData` (``alkit.potential``)."""

from .dataset import DatasetData, subset_dataset
from .potential import PotentialData

__all__ = ['DatasetData', 'PotentialData', 'subset_dataset']
