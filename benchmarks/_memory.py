"""Peak-memory sampler shared by the benchmarks (standard library only at import: the OpenPrompt
worker imports it under its own virtual environment)."""

from __future__ import annotations

import os
import threading
from typing import Any


class PeakRSS:
    """Peak resident-set growth (bytes) above the level at entry, polled every 5 ms; on a CUDA
    ``device``, the peak CUDA memory allocated above the level at entry instead."""

    def __init__(self, device: Any = None) -> None:
        self.cuda = getattr(device, "type", None) == "cuda"
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRSS:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss() - self.base)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            self.peak = torch.cuda.max_memory_allocated() - self.base
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self.base)
