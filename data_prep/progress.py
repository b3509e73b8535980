"""Progress of a long conversion: a tqdm bar on a terminal, plain periodic lines otherwise.

A bar redrawn with carriage returns is unreadable in a log file or CI output, so when stderr is
not a terminal the progress is a line every ``every_s`` seconds (and one at the end).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """``with Progress(total, "decoding images", verbose) as p: p.update(n)``."""

    def __init__(self, total: int | None, desc: str, verbose: bool = True, unit: str = "img",
                 every_s: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.verbose = verbose
        self.done = 0
        self._bar = None
        self._start = self._last = time.monotonic()
        if verbose and sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.verbose and time.monotonic() - self._last >= self.every_s:
            self._line()

    def _line(self) -> None:
        self._last = time.monotonic()
        of = f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)" if self.total else f" {self.unit}"
        rate = self.done / max(self._last - self._start, 1e-9)
        print(f"data_prep: {self.desc}: {self.done}{of}, {rate:.0f} {self.unit}/s",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.verbose and self.done and self._last != self._start:
            self._line()  # a final line, unless the job was too short to print any

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
