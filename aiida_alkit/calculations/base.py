"""What every alkit CalcJob shares: ``python -m aiida_alkit.jobs.<name> .`` with the ``alkit-python`` code, one
``parameters.json``, repository files copied in without rewriting, and the common exit codes."""

from __future__ import annotations

import json

from aiida.common.datastructures import CalcInfo, CodeInfo
from aiida.engine import CalcJob

from aiida_alkit.jobs.common import GRANTED_CORES_KEY, PARAMETERS_FILE, RESULTS_FILE

__all__ = ['AlkitJobCalculation']


class AlkitJobCalculation(CalcJob):
    """Base of the alkit CalcJobs; subclasses set ``JOB`` (module name in ``aiida_alkit.jobs``) and implement
    :meth:`job_parameters`, :meth:`job_files` and :meth:`retrieved_files`."""

    JOB = ''

    @classmethod
    def define(cls, spec):
        super().define(spec)
        options = spec.inputs['metadata']['options']
        options['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        options['withmpi'].default = False
        options['parser_name'].default = f'alkit.{cls.JOB}'
        options['output_filename'].default = 'job.out'
        spec.exit_code(
            300,
            'ERROR_NO_RESULTS_FILE',
            message='The job wrote no results file: it crashed or was killed ({detail}).',
        )
        spec.exit_code(301, 'ERROR_INVALID_RESULTS_FILE', message='The results file could not be read: {error}')
        spec.exit_code(400, 'ERROR_JOB_FAILED', message=f'The {cls.JOB} job failed: {{error}}')

    def job_parameters(self) -> dict:
        """Content of ``parameters.json``."""
        raise NotImplementedError

    def job_files(self) -> list[tuple[str, str, str]]:
        """``(node uuid, repository file name, name in the work folder)`` of the input files."""
        raise NotImplementedError

    def retrieved_files(self) -> tuple[list[str], list[str]]:
        """Files kept in the ``retrieved`` folder and files only handed to the parser (large outputs)."""
        raise NotImplementedError

    def granted_cores(self) -> int:
        """Cores of the scheduler request that the job's one process may use: ``num_cores_per_mpiproc`` when set,
        else ``num_cores_per_machine``, else ``num_mpiprocs_per_machine`` (1 by default), so that a job never runs
        more torch threads than it asked its scheduler (or the shared localhost) for."""
        resources = self.node.get_option('resources') or {}
        for key in ('num_cores_per_mpiproc', 'num_cores_per_machine', 'num_mpiprocs_per_machine'):
            if resources.get(key):
                return max(1, int(resources[key]))
        return 1

    def prepare_for_submission(self, folder):
        parameters = {**self.job_parameters(), GRANTED_CORES_KEY: self.granted_cores()}
        with folder.open(PARAMETERS_FILE, 'w') as handle:
            json.dump(parameters, handle, indent=1)
        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ['-m', f'aiida_alkit.jobs.{self.JOB.split(".")[0]}', '.']
        codeinfo.stdout_name = self.metadata.options.output_filename
        codeinfo.join_files = True
        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = self.job_files()
        kept, temporary = self.retrieved_files()
        calcinfo.retrieve_list = [RESULTS_FILE, self.metadata.options.output_filename, *kept]
        calcinfo.retrieve_temporary_list = temporary
        return calcinfo
