"""Where the embedded AiiDA profile lives, decided before AiiDA is imported.

The profile's config folder is ``<home>/.aiida`` where ``<home>`` is, in order:
``$AIIDA_PATH`` if the user set it; ``$ALKIT_HOME``; the repository checkout this package runs from (the folder
holding ``pyproject.toml`` next to ``aiida_alkit/``); ``~/.alkit`` otherwise. This module must not import AiiDA:
AiiDA reads ``AIIDA_PATH`` once, when its configuration module is first imported.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ['configure_aiida_path', 'project_home']


def project_home() -> pathlib.Path:
    """Folder whose ``.aiida`` sub-folder holds the embedded profile (see the module docstring)."""
    if os.environ.get('ALKIT_HOME'):
        return pathlib.Path(os.environ['ALKIT_HOME']).expanduser().resolve()
    checkout = pathlib.Path(__file__).resolve().parents[2]
    if (checkout / 'pyproject.toml').is_file() and (checkout / 'aiida_alkit').is_dir():
        return checkout
    return pathlib.Path('~/.alkit').expanduser()


def configure_aiida_path() -> pathlib.Path:
    """Point AiiDA at the embedded profile unless the user chose a config folder with ``AIIDA_PATH``."""
    if not os.environ.get('AIIDA_PATH'):
        os.environ['AIIDA_PATH'] = str(project_home())
    return pathlib.Path(os.environ['AIIDA_PATH'].split(os.pathsep)[0]).expanduser()
