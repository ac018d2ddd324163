"""Measurements of a CLIPSeg run: the step split (:class:`StepTimes`) and a block's peak memory
(:class:`PeakMemory`), which the benchmark reads to explain which strategy is fastest and why."""

from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass

import torch

__all__ = ["PeakMemory", "StepTimes"]


@dataclass
class StepTimes:
    """Seconds spent in each part of the optimizer steps of a run (summed over steps).

    Attributes:
        data: gathering the batch (slice set or encoder cache) and moving it to the device.
        forward: logits and loss.
        backward: ``loss.backward()``.
        optimizer: gradient clipping, ``AdamW.step``, ``zero_grad``.
        steps: optimizer steps timed.
        samples: training samples in those steps (all ranks).
    """

    data: float = 0.0
    forward: float = 0.0
    backward: float = 0.0
    optimizer: float = 0.0
    steps: int = 0
    samples: int = 0

    @property
    def total(self) -> float:
        """Seconds of all four parts."""
        return self.data + self.forward + self.backward + self.optimizer

    def per_step(self) -> dict[str, float]:
        """Mean seconds per step of each part and of the step."""
        n = max(1, self.steps)
        return {
            "data": self.data / n,
            "forward": self.forward / n,
            "backward": self.backward / n,
            "optimizer": self.optimizer / n,
            "step": self.total / n,
        }


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated``, or the process RSS sampled every 10 ms on CPU.

    ``ru_maxrss`` only grows over the process's life, so runs after the first would all report the same
    peak; sampling ``/proc/self/statm`` gives each block its own (falls back to ``ru_maxrss`` elsewhere).

    Attributes:
        kind: ``"cuda"`` or ``"cpu_rss"``.
        peak_mib: the peak, MiB.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "cpu_rss"
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_mib() -> float:
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                pages = int(handle.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mib = self._rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_mib = max(self.peak_mib, self._rss_mib())
