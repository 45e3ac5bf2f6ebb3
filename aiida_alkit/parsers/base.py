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
        """What the scheduler wrote to the job's stderr, its lines joined (e.g. SLURM's ``CANCELLED AT ...`` and the
        shell's ``Terminated``, in either order), at most 500 characters, or a note that it wrote none: the jobs join
        their own stderr to their output file, so this file holds only the scheduler's and the shell's messages."""
        name = self.node.get_option('scheduler_stderr')
        lines = []
        if name and name in self.retrieved.base.repository.list_object_names():
            lines = self.retrieved.base.repository.get_object_content(name).strip().splitlines()
        lines = [line.strip() for line in lines if line.strip()]  # e.g. SLURM's CANCELLED line, then the shell's
        return f'scheduler: {" | ".join(lines)[:500]}' if lines else 'the scheduler reported nothing'

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
