"""A progress bar for the command line (stderr): redrawn in place on a terminal, a few lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
REDRAW_INTERVAL_S = 0.1


class ProgressBar:
    """Call with (done, total); draws `label [#####.....] done/total`."""

    def __init__(self, label: str, stream: TextIO | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._last_draw = 0.0
        self._last_quarter = -1

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        if self.interactive:
            now = time.monotonic()
            if done < total and now - self._last_draw < REDRAW_INTERVAL_S:
                return
            self._last_draw = now
            filled = BAR_WIDTH * done // total
            end = "\n" if done >= total else ""
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}{end}")
            self.stream.flush()
            return
        quarter = 4 * done // total  # not a terminal (CI logs): a line at 0, 25, 50, 75 and 100 %
        if quarter != self._last_quarter:
            self._last_quarter = quarter
            self.stream.write(f"{self.label}: {done}/{total}\n")
            self.stream.flush()


class ProgressBoard:
    """One bar per device: redrawn as a block on a terminal; otherwise a line per device at 0, 25,
    50, 75 and 100 % and whenever its status word changes (CI logs stay short)."""

    def __init__(self, labels: list[str], stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._width = max((len(label) for label in labels), default=0)
        self._rows: dict[str, tuple[int, int, str]] = {label: (0, 0, "waiting") for label in labels}
        self._logged: dict[str, tuple[int, str]] = {}
        self._drawn = False
        self._last_draw = 0.0

    def update(self, label: str, done: int, total: int, status: str) -> None:
        self._rows[label] = (done, total, status)
        if not self.interactive:
            quarter = 4 * done // total if total else 0
            if self._logged.get(label) != (quarter, status):
                self._logged[label] = (quarter, status)
                self.stream.write(f"{label}: {status} {done}/{total}\n")
                self.stream.flush()

    def draw(self, final: bool = False) -> None:
        """Redraw every bar (a terminal only; at most every REDRAW_INTERVAL_S unless final)."""
        if not self.interactive:
            return
        now = time.monotonic()
        if not final and now - self._last_draw < REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        lines = []
        for label, (done, total, status) in self._rows.items():
            filled = BAR_WIDTH * done // total if total else 0
            lines.append(f"\x1b[2K{label:<{self._width}} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                         f"{done}/{total} {status}")
        up = f"\x1b[{len(lines)}F" if self._drawn else ""
        self.stream.write(up + "\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = True
