"""Progress bars, one kind everywhere: tqdm on a terminal or in a notebook; elsewhere (a log
file, CI, a pipe) one plain line per finished unit of the outer bars, with the time per unit
measured in this process, and nothing from the inner bars (``leave=False``: steps of one run),
whose carriage returns would fill a log with noise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm


def _interactive(stream: IO[str]) -> bool:
    """A terminal, or a Jupyter kernel (where tqdm.auto draws a widget)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None,
        desc: str | None = None, unit: str = "it", initial: int = 0, leave: bool = True,
        disable: bool = False, file: IO[str] | None = None) -> Any:
    """A progress bar over ``iterable`` (or ``total`` units, advanced by ``update``): tqdm when
    the output is interactive, else ``Lines`` (``leave=False`` bars: silent)."""
    stream = sys.stderr if file is None else file
    if disable or (not leave and not _interactive(stream)):
        return tqdm(iterable, total=total, disable=True)
    if _interactive(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    file=stream)
    return Lines(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream)


class Lines:
    """tqdm's ``update``/``set_postfix_str``/``close`` as one line per update:
    ``desc: n/total unit, elapsed s, ~s left (postfix)``. The estimate is the mean time of the
    units finished in this process (units done before a resume do not count) times those
    left; none before the first unit finishes."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str | None = None, unit: str = "it", initial: int = 0,
                 file: IO[str] | None = None) -> None:
        self.iterable, self.desc, self.unit, self.file = iterable, desc or "progress", unit, file
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n = self.start_n = initial
        self.start, self.postfix = time.perf_counter(), ""

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        elapsed = time.perf_counter() - self.start
        done = self.n - self.start_n
        line = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")
        line += f" {self.unit}, {elapsed:.0f} s"
        if self.total and done > 0:
            line += f", ~{elapsed / done * max(self.total - self.n, 0):.0f} s left"
        if self.postfix:
            line += f" ({self.postfix})"
        print(line, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        pass
