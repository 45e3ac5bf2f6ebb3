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
        """The job's results dictionary, or the exit code saying why there is none: the scheduler's when its output
        parser found one (AiiDA sets it on the node before the parser runs; e.g. 120, the scheduler killed the job at
        its walltime, which ``TrainWorkChain`` resumes from), else ``ERROR_NO_RESULTS_FILE`` with the scheduler's
        last message."""
        if RESULTS_FILE not in self.retrieved.base.repository.list_object_names():
            if self.node.exit_status:  # the scheduler's exit code: keep it, a parser's generic one would hide it
                return None, ExitCode(self.node.exit_status, self.node.exit_message)
            return None, self.exit_codes.ERROR_NO_RESULTS_FILE.format(detail=self.scheduler_message())
        try:
            return json.loads(self.retrieved.base.repository.get_object_content(RESULTS_FILE)), None
        except ValueError as exc:
            return None, self.exit_codes.ERROR_INVALID_RESULTS_FILE.format(error=str(exc))

    def scheduler_message(self) -> str:
        """The last line the scheduler wrote to the job's stderr (e.g. SLURM's ``CANCELLED AT ...``), or a note
        that it wrote none: the jobs join their own stderr to their output file, so this file holds only the
        scheduler's messages."""
        name = self.node.get_option('scheduler_stderr')
        lines = []
        if name and name in self.retrieved.base.repository.list_object_names():
            lines = self.retrieved.base.repository.get_object_content(name).strip().splitlines()
        return f'scheduler: {lines[-1].strip()}' if lines else 'the scheduler reported nothing'

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
