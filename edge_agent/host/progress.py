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
