"""Fixtures of the CalcJob tests: ``generate_calc_job`` runs a CalcJob's ``prepare_for_submission`` on a temporary
folder without submitting anything, as aiida-quantumespresso's fixture of the same name does."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from aiida.common.datastructures import CalcInfo
from aiida.common.folders import Folder


@pytest.fixture
def generate_calc_job(tmp_path) -> Callable[[str, dict[str, Any]], tuple[pathlib.Path, CalcInfo]]:
    """Factory ``(entry_point, inputs) -> (folder, calcinfo)``: the CalcJob is instantiated with ``inputs`` (so the
    spec's validators run) and writes its input files into ``folder``."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager
    from aiida.plugins import CalculationFactory

    def _generate(entry_point: str, inputs: dict[str, Any]) -> tuple[pathlib.Path, CalcInfo]:
        folder = tmp_path / 'sandbox'
        folder.mkdir()
        process = instantiate_process(get_manager().get_runner(), CalculationFactory(entry_point), **inputs)
        calcinfo = process.prepare_for_submission(Folder(str(folder)))
        return folder, calcinfo

    return _generate
