"""Progress of long compute_score calls: a small bar on stderr, no dependency.

`show_progress_bar` (sentence-transformers' name; constructor or call): None, the default, shows the bar when stderr is
a terminal and the call spans at least one full batch (FlagEmbedding's tqdm bar is off below one batch); True and
False force it either way. Anything with the tqdm shape is taken too: a callable that takes `total=` (pairs) and
returns an object with `update(n)` and `close()`, e.g. `functools.partial(tqdm.tqdm, desc="scoring")`.

On a terminal the bar redraws one line in place (at most ten times a second); elsewhere (a log file, a pipe) it writes
one line per tenth of the work, so a log stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO, cast


class Tracker(Protocol):
    def update(self, n: int) -> Any: ...
    def close(self) -> Any: ...


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def check_setting(value: Any) -> None:
    if not (value is None or isinstance(value, bool) or callable(value)):
        raise TypeError("show_progress_bar must be None (a bar on a terminal for calls of a batch or more), True, "
                        f"False, or a callable like tqdm that takes total=; got {type(value).__name__}: {value!r}")


def open_tracker(setting: Any, total: int, batch_size: int, stream: TextIO | None = None) -> Tracker | None:
    """The tracker a call of `total` pairs reports to, or None for no progress."""
    check_setting(setting)
    out: TextIO = stream or sys.stderr
    if callable(setting) and not isinstance(setting, bool):
        return cast(Tracker, setting(total=total))
    show = (is_terminal(out) and total >= batch_size) if setting is None else setting
    return Bar(total, "compute_score", out) if show and total > 0 else None


class Bar:
    """`label  1200/2000 pairs [######----]  60%  7.9 s, ~5 s left` on a terminal; lines at each tenth elsewhere."""

    WIDTH = 24
    REDRAW_S = 0.1

    def __init__(self, total: int, label: str, stream: TextIO, unit: str = "pairs") -> None:
        self.total, self.label, self.stream, self.unit = total, label, stream, unit
        self.done, self.start, self.drawn_at = 0, time.perf_counter(), 0.0
        self.terminal = is_terminal(stream)
        self.tenths = 0  # tenths of the work already logged (not on a terminal)
        self.closed = False

    def update(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        now = time.perf_counter()
        if self.terminal:
            if now - self.drawn_at >= self.REDRAW_S or self.done == self.total:
                self.drawn_at = now
                self._write("\r" + self._line(now) + "\x1b[K")
        elif self.done < self.total and self.done * 10 // self.total > self.tenths:
            self.tenths = self.done * 10 // self.total
            self._write(self._line(now) + "\n")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.perf_counter()
        elapsed = now - self.start
        rate = f" ({self.done / elapsed:.0f} {self.unit}/s)" if elapsed > 0 and self.done else ""
        ending = "" if self.done == self.total else f" (stopped at {self.done}/{self.total})"
        text = f"{self.label}: {self.done} {self.unit} in {elapsed:.1f} s{rate}{ending}"
        self._write(("\r" + text + "\x1b[K\n") if self.terminal else text + "\n")

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        frac = self.done / self.total
        filled = int(frac * self.WIDTH)
        left = f", ~{elapsed * (1 - frac) / frac:.0f} s left" if 0 < frac < 1 else ""
        return (f"{self.label} {self.done:>{len(str(self.total))}}/{self.total} {self.unit} "
                f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {frac:4.0%} {elapsed:.1f} s{left}")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream never fails the scoring
            pass
