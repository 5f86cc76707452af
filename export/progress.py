"""Phase reporting for long work: each phase's name and time, and what its slow steps have done so far.

On a terminal the running phase is one line redrawn in place, `[4/4] verify ... 3 s, reference 12/24 probe pairs`,
with the elapsed time ticking once a second. Elsewhere (a log file, a pipe) nothing ticks: one line when a phase
starts, one when each counted step finishes, one when the phase is done, so that a log stays readable.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rerank_runtime.progress import is_terminal

TICK_S = 1.0


class Progress:
    def __init__(self, phases: list[str], stream: TextIO | None = None, quiet: bool = False):
        self.phases, self.stream, self.quiet = phases, stream or sys.stderr, quiet
        self.times: dict[str, float] = {}
        self.terminal = not quiet and is_terminal(self.stream)
        self._lock = threading.Lock()
        self._step: str | None = None  # the running phase's label, while one runs
        self._start = 0.0
        self._detail = ""

    def say(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.terminal and self._step is not None:  # above the phase line, which is then redrawn
                self._write("\r\x1b[K" + text + "\n")
                self._draw()
            else:
                self._write(text + "\n")

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        step = f"[{self.phases.index(name) + 1}/{len(self.phases)}] {name}" if name in self.phases else name
        stop = threading.Event()
        with self._lock:
            self._step, self._start, self._detail = step, time.perf_counter(), ""
        ticker = None
        if self.terminal:
            ticker = threading.Thread(target=self._tick, args=(stop,), daemon=True)
            with self._lock:
                self._draw()
            ticker.start()
        else:
            self.say(f"{step} ...")
        try:
            yield
        finally:
            stop.set()
            if ticker:
                ticker.join()
            with self._lock:
                self.times[name] = time.perf_counter() - self._start
                self._step = None
                if self.terminal:
                    self._write("\r\x1b[K")
        self.say(f"{step} done in {self.times[name]:.1f} s")

    def counter(self, label: str, unit: str = "probe pairs") -> Callable[..., _Count]:
        """A tracker factory for a counted step of the running phase, in the shape compute_score's show_progress_bar
        takes (total= -> update(n), close())."""
        return lambda total: _Count(self, label, unit, total)

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(TICK_S):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        """Redraw the running phase's line (terminal only; the caller holds the lock)."""
        if self._step is not None:
            elapsed = time.perf_counter() - self._start
            self._write(f"\r{self._step} ... {elapsed:.0f} s{self._detail}\x1b[K")

    def _write(self, text: str) -> None:
        print(text, end="", file=self.stream, flush=True)

    def _count(self, count: _Count, finished: bool) -> None:
        if self.quiet:
            return
        text = f"{count.label} {count.done}/{count.total} {count.unit}"
        with self._lock:
            if self.terminal:
                self._detail = f", {text}"
                self._draw()
        if finished and not self.terminal:
            self.say(f"{self._step or ''}: {text} in {time.perf_counter() - count.start:.1f} s")


class _Count:
    def __init__(self, progress: Progress, label: str, unit: str, total: int) -> None:
        self.progress, self.label, self.unit, self.total = progress, label, unit, total
        self.done, self.start = 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        self.progress._count(self, finished=False)

    def close(self) -> None:
        self.progress._count(self, finished=True)
