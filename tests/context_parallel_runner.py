"""The benchmark runner as torchrun starts it, with the test harness's one CPU workaround.

    torchrun --nproc_per_node 4 tests/context_parallel_runner.py --context-parallel 2 --model tiny:wan ...

diffusers 0.42 places each rank on ``rank % torch.accelerator.device_count()``, which is 0 (ZeroDivisionError)
on a machine without an accelerator; here it says one device. The runner itself refuses --context-parallel
without an accelerator.
"""

from __future__ import annotations

import sys

import torch

if __name__ == "__main__":
    if torch.accelerator.device_count() == 0:
        torch.accelerator.device_count = lambda: 1
    from vwarper_hooks.apps.benchmark import main

    sys.exit(main())
