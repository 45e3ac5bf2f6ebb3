"""The selection modules import each other without a cycle: dopt and greedy share ``selection.result`` and dopt
never imports greedy (greedy's ``select_batch`` dispatches to dopt's ``max_vol``, one way only)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import aiida_alkit

PACKAGE = pathlib.Path(aiida_alkit.__file__).parent
SELECTION = 'aiida_alkit.selection'


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every ``aiida_alkit`` module that ``path`` imports, at module level or inside a function."""
    module = _module_name(path)
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[: len(package.split('.')) - (node.level - 1)]
                base = '.'.join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f'{base}.{alias.name}' for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.startswith('aiida_alkit')}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob('*.py')}
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def _cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """An import path from ``start`` back to ``start``, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        name, path = stack.pop()
        for target in sorted(graph.get(name, ())):
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_import_graph_sees_imports():
    """The parser of the graph finds the imports the modules are known to have (so the cycle test can fail)."""
    graph = _graph()
    assert f'{SELECTION}.result' in graph[f'{SELECTION}.dopt']
    assert f'{SELECTION}.result' in graph[f'{SELECTION}.greedy']
    assert f'{SELECTION}.greedy' in graph[f'{SELECTION}.api']
    assert _cycle_through('a', {'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_no_import_cycle_through_selection():
    graph = _graph()
    assert f'{SELECTION}.greedy' not in graph[f'{SELECTION}.dopt']
    assert not graph[f'{SELECTION}.result'], 'selection.result must stay a leaf module'
    for name in sorted(graph):
        if name.startswith(SELECTION):
            assert _cycle_through(name, graph) is None, f'import cycle: {" -> ".join(_cycle_through(name, graph))}'


def test_dopt_imports_with_greedy_blocked():
    """In a fresh interpreter where importing greedy raises, dopt still imports and selects."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        sys.modules['aiida_alkit.selection.greedy'] = None  # any import of greedy now raises ImportError
        from aiida_alkit.selection.dopt import max_vol
        from aiida_alkit.selection.result import SelectionResult
        rng = np.random.default_rng(0)
        result = max_vol(rng.normal(size=(6, 3)) * 20.0, rng.normal(size=(20, 3)), batch_size=2)
        assert isinstance(result, SelectionResult) and result.method == 'maxvol', result
        print('picked', len(result))
        """
    )
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == 'picked 2'


def test_public_names_stay_where_they_were():
    from aiida_alkit.selection import dopt, greedy, result

    assert greedy.SelectionResult is result.SelectionResult
    assert greedy._check_batch_size is result.check_batch_size
    assert greedy.select_batch('maxvol', [[30.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], 1).method == 'maxvol'
    assert dopt.max_vol.__module__ == f'{SELECTION}.dopt'
