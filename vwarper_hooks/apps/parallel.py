"""Data parallel x context parallel for the benchmark runner: which videos a process makes, with whom.

The launcher (torchrun or accelerate) starts W processes. With ``--context-parallel N`` they form W/N
groups of N consecutive ranks: each group makes one video at a time, its N ranks splitting that video's
tokens (diffusers' ``ContextParallelConfig(ulysses_degree=N)``, which V-Warper follows for Wan), and the
groups share out the jobs (data parallel). N = 1 is plain data parallel: one video per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import VwarperError


@dataclass(frozen=True)
class Layout:
    """Where one process stands: its group (one video at a time) and its place in it."""

    groups: int  # videos made at once (data parallel)
    group: int  # this process's group: it makes jobs group, group + groups, ...
    ranks: int  # ranks per video (context parallel)
    member: int  # this process's place in its group (0 writes the files)

    @classmethod
    def of(cls, processes: int, index: int, ranks: int) -> Layout:
        if ranks < 1 or processes % ranks:
            raise VwarperError(
                f"Expected a process count divisible by --context-parallel {ranks}, but the launcher started "
                f"{processes} process(es). Start a multiple of {ranks} processes, or change --context-parallel."
            )
        return cls(processes // ranks, index // ranks, ranks, index % ranks)

    @property
    def writes(self) -> bool:
        """The process that writes its group's files (every rank of a group makes the same video)."""
        return self.member == 0

    def share(self, jobs: list[Any]) -> list[Any]:
        """This group's jobs."""
        return jobs[self.group :: self.groups]


def enable_context_parallel(pipe: Any, layout: Layout) -> None:
    """Split each video of this process's group over its ranks: a (groups, 1, ranks) device mesh named
    ("dp", "ring", "ulysses"), and ``enable_parallelism`` with Ulysses attention of degree ``layout.ranks``."""
    if layout.ranks == 1:
        return
    try:
        from diffusers import ContextParallelConfig
    except ImportError:
        raise VwarperError("Expected diffusers >= 0.36 for --context-parallel (ContextParallelConfig), but the "
                           "installed release lacks it. Upgrade diffusers.") from None
    if torch.accelerator.device_count() == 0:
        raise VwarperError(
            "Expected an accelerator for --context-parallel, but this machine has none: diffusers places each rank "
            "on device `rank % torch.accelerator.device_count()`, which is 0 here. Run on GPUs, or without "
            "--context-parallel (one video per process)."
        )
    from torch.distributed.device_mesh import init_device_mesh

    device_type = torch._C._get_accelerator().type
    mesh = init_device_mesh(device_type, (layout.groups, 1, layout.ranks), mesh_dim_names=("dp", "ring", "ulysses"))
    from ..parallel import enable_context_parallel as split_video

    split_video(pipe, ContextParallelConfig(ulysses_degree=layout.ranks, mesh=mesh))
