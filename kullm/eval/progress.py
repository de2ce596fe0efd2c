"""A progress bar on stderr for `kullm eval`: redrawn in place on a terminal, plain lines
(every tenth of the way) when stderr is a file or a pipe."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, already: int, out: TextIO, width: int = 30) -> None:
        self.total = total
        self.count = already
        self.failed = 0
        self.out = out
        self.width = width
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.fresh = 0
        self._step = max(1, total // 10)
        if already:
            print(f"kullm eval: {already} of {total} already judged, resuming", file=out)

    def done(self, ok: bool) -> None:
        self.count += 1
        self.fresh += 1
        self.failed += 0 if ok else 1
        if self.tty:
            self._draw()
        elif self.count % self._step == 0 or self.count == self.total:
            print(f"kullm eval: {self.count}/{self.total} ({self.failed} failed)", file=self.out,
                  flush=True)

    def _draw(self) -> None:
        filled = int(self.width * self.count / max(1, self.total))
        elapsed = time.monotonic() - self.started
        left = elapsed / self.fresh * (self.total - self.count) if self.fresh else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        self.out.write(f"\r[{bar}] {self.count}/{self.total} {self.failed} failed, "
                       f"~{left:.0f} s left ")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.fresh:
            self.out.write("\n")
            self.out.flush()
