"""Environment for training worker processes: the glibc malloc setting that removes page-fault time.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it on free, so each training step touches its large tensors (stacked
Conv4d inputs, activations, gradients) page by page again: 4 KiB minor faults. With
``glibc.malloc.hugetlb=1`` malloc asks for transparent huge pages on those mappings
(``madvise(MADV_HUGEPAGE)``, which the default THP mode "madvise" honours), so a fault maps
2 MiB instead of 4 KiB.

Measured by bench/conv4d_bench.py (``malloc_tunables``; Conv4d shape A, N=8 C=8->16 16^4,
a fresh input each step, glibc 2.36, 2 cores). Fault counts are the same in every run:

- forward: 20,482 -> 43-553 minor faults per step;
- forward + backward: 28,675 -> 1,081 minor faults per step.

Time is less clear than faults. One idle run gave best steps 58 -> 46 ms forward (1.26x) and
107 -> 92 ms forward+backward (1.16x); a later near-idle full run measured this very setting
twice, as its "hugetlb" row (1.42x / 1.65x) and its "worker_environment()" row (0.89x / 1.03x),
so on 2 cores the step times vary more between runs than between settings. A training job's
throughput through the daemon showed no measurable difference with or without it. It stays
because the fault reduction is certain and no run showed it costing time beyond that noise.

Raising ``mmap_threshold``/``trim_threshold`` alone changed nothing (the large tensors stay
above the 32 MiB ceiling of the mmap threshold) and added no gain on top of hugetlb;
``mmap_max=0`` (no mmap at all) removed the faults too but ran slower in some runs and
never returns memory to the system, so it is not used.
"""

from __future__ import annotations

_TUNABLES = "glibc.malloc.hugetlb=1"


def worker_environment() -> dict[str, str]:
    """Variables to add to a worker's environment at spawn (glibc reads them at process start)."""
    return {"GLIBC_TUNABLES": _TUNABLES}
