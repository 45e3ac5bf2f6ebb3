"""`PotentialData`: a trained potential (one weights file) with its hyper-parameters and metrics as attributes."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from aiida import orm

from aiida_alkit.models.serialization import PotentialFile, PotentialFileError, load_potential_file

__all__ = ['PotentialData']


class PotentialData(orm.Data):
    """A potential file (see :mod:`aiida_alkit.models.serialization`) stored in the repository.

    Attributes: ``model_kind``, ``species``, ``cutoff`` (Å), ``format_version``, ``hyperparameters`` (all of them,
    as a dictionary), ``extras`` (names of extra tensors saved with the weights, e.g. the RLEKF P blocks), and
    ``metrics`` (e.g. validation RMSEs in eV/atom and eV/Å) set with :meth:`set_metrics`.
    The file is only ever read with ``torch.load(..., weights_only=True)``.
    """

    FILENAME = 'potential.pt'

    def __init__(self, file: str | os.PathLike | None = None, **kwargs: Any) -> None:
        """
        :param file: path of a potential file; it is read (safely) and checked before it is accepted.
        :raises PotentialFileError: if the file is corrupt, truncated or not a potential file.
        """
        super().__init__(**kwargs)
        if file is not None:
            self.set_file(file)

    def set_file(self, file: str | os.PathLike) -> None:
        """Store ``file`` as this node's potential, after checking that it loads."""
        content = load_potential_file(file)
        self.base.repository.put_object_from_file(os.fspath(file), self.FILENAME)
        hyper = content.hyperparameters
        self.base.attributes.set('model_kind', hyper['model_kind'])
        self.base.attributes.set('species', list(hyper['species']))
        self.base.attributes.set('cutoff', float(hyper['cutoff']))
        self.base.attributes.set('format_version', content.format_version)
        self.base.attributes.set('hyperparameters', hyper)
        self.base.attributes.set('extras', sorted(content.extras))

    def set_metrics(self, metrics: Mapping[str, float]) -> None:
        """Record metrics (units in the key names, e.g. ``valid_forces_rmse_ev_per_ang``) on an unstored node."""
        self.base.attributes.set('metrics', {str(k): float(v) for k, v in metrics.items()})

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.base.attributes.get('metrics', {}))

    @property
    def model_kind(self) -> str:
        return self.base.attributes.get('model_kind')

    @property
    def species(self) -> list[str]:
        return list(self.base.attributes.get('species'))

    @property
    def cutoff(self) -> float:
        return float(self.base.attributes.get('cutoff'))

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.base.attributes.get('hyperparameters'))

    def load(self) -> PotentialFile:
        """Read the stored file (``weights_only=True``)."""
        with self.base.repository.open(self.FILENAME, 'rb') as handle:
            buffer = io.BytesIO(handle.read())
        return load_potential_file(buffer, name=f'PotentialData<{self.uuid}>')

    def export(self, path: str | os.PathLike) -> None:
        """Copy the potential file out of the repository to ``path``."""
        with self.base.repository.open(self.FILENAME, 'rb') as source, open(path, 'wb') as target:
            target.write(source.read())


__all__ += ['PotentialFileError']
