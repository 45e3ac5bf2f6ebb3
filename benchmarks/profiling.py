"""Operator counts for the speed benchmarks (torch profiler): how many aten operators (and, on CUDA, kernel launches)
one training step or one MD step issues. The operator count is the same on CPU and GPU for the same code, so it can
be tracked on a machine without a GPU; fewer operators means fewer kernel launches and less Python/dispatcher work.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ['count_operator_calls']


def count_operator_calls(function: Callable[[], object]) -> dict[str, int]:
    """``ops`` (aten operator calls, nested ones included) and ``kernel_launches`` (CUDA runtime launches, 0 on the
    CPU) of one call of ``function`` (run once before to warm up)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    function()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = profiler.key_averages()
    ops = sum(event.count for event in events if event.key.startswith('aten::'))
    launches = sum(event.count for event in events if event.key in ('cudaLaunchKernel', 'cuLaunchKernel'))
    return {'ops': int(ops), 'kernel_launches': int(launches)}
