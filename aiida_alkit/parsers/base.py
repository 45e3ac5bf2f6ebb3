"""What the alkit parsers share: reading the job's ``results.json`` and mapping its failures to exit codes."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_alkit.jobs.common import RESULTS_FILE

__all__ = ['AlkitJobParser']


class AlkitJobParser(Parser):
    """Base of the alkit parsers."""

    def read_results(self) -> tuple[dict[str, Any] | None, ExitCode | None]:
        """The job's results dictionary, or the exit code saying why there is none."""
        if RESULTS_FILE not in self.retrieved.base.repository.list_object_names():
            return None, self.exit_codes.ERROR_NO_RESULTS_FILE
        try:
            return json.loads(self.retrieved.base.repository.get_object_content(RESULTS_FILE)), None
        except ValueError as exc:
            return None, self.exit_codes.ERROR_INVALID_RESULTS_FILE.format(error=str(exc))

    def read_json(self, name: str) -> Any:
        """Another retrieved JSON file (None when absent)."""
        if name not in self.retrieved.base.repository.list_object_names():
            return None
        return json.loads(self.retrieved.base.repository.get_object_content(name))

    @staticmethod
    def temporary_file(kwargs: dict[str, Any], name: str) -> pathlib.Path | None:
        """A file of the retrieved temporary folder (large outputs), or None."""
        folder = kwargs.get('retrieved_temporary_folder')
        path = pathlib.Path(folder) / name if folder else None
        return path if path is not None and path.is_file() else None
