"""One-file potential format: weights + JSON hyper-parameters + format version, loaded without pickle.

A potential file is what ``torch.save`` writes for a plain dictionary::

    {
        'format': 'aiida-alkit-potential',
        'format_version': 1,
        'hyperparameters': '<JSON text>',   # model kind, species, cutoff (Å), widths, ...
        'state_dict': {name: tensor},        # the model weights
        'extras': {name: tensor},            # optional tensors saved with the model (e.g. RLEKF P blocks)
    }

It is always read with ``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain
containers, so a file from an untrusted source cannot run code. A corrupt, truncated or foreign file raises
:class:`PotentialFileError` with a message naming the file and the problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    'FORMAT_NAME',
    'FORMAT_VERSION',
    'PotentialFile',
    'PotentialFileError',
    'load_potential_file',
    'save_potential_file',
]

FORMAT_NAME = 'aiida-alkit-potential'
FORMAT_VERSION = 1
#: Hyper-parameters every potential file must carry.
REQUIRED_HYPERPARAMETERS = ('model_kind', 'species', 'cutoff')


class PotentialFileError(ValueError):
    """A potential file that cannot be used: corrupt, truncated, foreign or of an unknown format version."""


@dataclass
class PotentialFile:
    """Content of a potential file."""

    hyperparameters: dict[str, Any]
    state_dict: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def _check_hyperparameters(hyperparameters: Mapping[str, Any], source: str) -> dict[str, Any]:
    missing = [key for key in REQUIRED_HYPERPARAMETERS if key not in hyperparameters]
    if missing:
        raise PotentialFileError(f'{source}: hyper-parameters lack {missing}')
    species = hyperparameters['species']
    if not isinstance(species, (list, tuple)) or not species or not all(isinstance(s, str) for s in species):
        raise PotentialFileError(f'{source}: hyper-parameter "species" must be a non-empty list of element symbols')
    cutoff = hyperparameters['cutoff']
    if not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise PotentialFileError(f'{source}: hyper-parameter "cutoff" must be a positive number of Å, got {cutoff!r}')
    return dict(hyperparameters)


def save_potential_file(
    path: str | os.PathLike,
    state_dict: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    extras: Mapping[str, Any] | None = None,
) -> None:
    """Write a potential file (see the module docstring). Hyper-parameters must be JSON-serialisable.

    The file is written next to its destination under a temporary name and then renamed over it, so that a process
    killed while writing (a scheduler's time limit hitting a train job in the middle of its checkpoint) leaves the
    previous file whole instead of a truncated one.
    """
    import torch

    hyperparameters = _check_hyperparameters(hyperparameters, str(path))
    payload = {
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'hyperparameters': json.dumps(hyperparameters, sort_keys=True),
        'state_dict': {name: tensor.detach().cpu() for name, tensor in state_dict.items()},
        'extras': {
            name: value.detach().cpu() if hasattr(value, 'detach') else value for name, value in (extras or {}).items()
        },
    }
    destination = os.fspath(path)
    temporary = os.path.join(
        os.path.dirname(destination) or '.', f'.{os.path.basename(destination)}.{os.getpid()}.part'
    )
    try:
        with open(temporary, 'wb') as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_potential_file(source: str | os.PathLike | Any, name: str | None = None) -> PotentialFile:
    """Read a potential file with ``weights_only=True``.

    :param source: a path or a binary file object.
    :param name: how to call the source in error messages (defaults to the path).
    :raises PotentialFileError: for a corrupt, truncated or foreign file, or a newer format version.
    """
    import pickle
    import zipfile

    import torch

    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else 'potential file')
    try:
        payload = torch.load(source, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise PotentialFileError(f'{label}: not a readable potential file (corrupt or truncated?): {exc}') from exc
    if not isinstance(payload, dict) or payload.get('format') != FORMAT_NAME:
        raise PotentialFileError(f'{label}: not an aiida-alkit potential file (no "format": "{FORMAT_NAME}" entry)')
    version = payload.get('format_version')
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise PotentialFileError(
            f'{label}: potential format version {version!r} is not supported (this code reads 1..{FORMAT_VERSION})'
        )
    try:
        hyperparameters = json.loads(payload['hyperparameters'])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise PotentialFileError(f'{label}: hyper-parameters missing or not valid JSON: {exc}') from exc
    hyperparameters = _check_hyperparameters(hyperparameters, label)
    state_dict = payload.get('state_dict')
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise PotentialFileError(f'{label}: "state_dict" must map parameter names to tensors')
    extras = payload.get('extras') or {}
    if not isinstance(extras, dict):
        raise PotentialFileError(f'{label}: "extras" must be a dictionary')
    return PotentialFile(hyperparameters=hyperparameters, state_dict=state_dict, extras=extras, format_version=version)
