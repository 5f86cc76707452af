"""Phase reporting for long work: each phase's name and time, and a ticking elapsed counter on a terminal."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


class Progress:
    def __init__(self, phases: list[str], stream: TextIO | None = None, quiet: bool = False):
        self.phases, self.stream, self.quiet = phases, stream or sys.stderr, quiet
        self.times: dict[str, float] = {}

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        step = f"[{self.phases.index(name) + 1}/{len(self.phases)}] {name}" if name in self.phases else name
        start = time.perf_counter()
        stop = threading.Event()
        ticker = None
        if not self.quiet and self.stream.isatty():
            def tick() -> None:
                while not stop.wait(1.0):
                    print(f"\r{step} ... {time.perf_counter() - start:.0f} s", end="", file=self.stream, flush=True)

            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
        else:
            self.say(f"{step} ...")
        try:
            yield
        finally:
            stop.set()
            if ticker:
                ticker.join()
                print("\r", end="", file=self.stream)
            self.times[name] = time.perf_counter() - start
        self.say(f"{step} done in {self.times[name]:.1f} s")
