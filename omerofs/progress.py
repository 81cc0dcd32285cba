"""Progress of a long CLI run (``omerofs import``, ``omerofs check --deep``): files and
bytes done, rate, the current item.

On a terminal it is one line redrawn in place (at most ten times a second: a redraw per
64 KiB chunk would cost more than the copy); elsewhere (a log, cron) only a plain line
per item and a summary, never carriage returns. Written by hand rather than with a
progress-bar library: one line of text is all it draws, and it must stay out of stdout,
which scripts read.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TextIO

REDRAW_EVERY = 0.1  # seconds between redraws of the live line


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


class Progress:
    """``live``: redraw one terminal line; otherwise ``lines``: one plain line per item;
    neither: silent. ``verb`` names what happens ("importing", "hashing")."""

    def __init__(
        self,
        stream: TextIO,
        verb: str,
        total_files: int,
        total_bytes: int,
        *,
        live: bool,
        lines: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream, self.verb = stream, verb
        self.total_files, self.total_bytes = total_files, total_bytes
        self.live, self.lines = live, lines and not live
        self.clock = clock
        self.started = clock()
        self.items = 0
        self.current = ""
        self.files_before = 0  # files of the items before the current one
        self.sizes: list[int] = []  # the current item's file sizes, in order
        self.item_bytes = 0
        self.bytes_done = 0
        self._drawn = 0.0
        self._width = 0

    @classmethod
    def for_stream(
        cls, stream: TextIO, verb: str, total_files: int, total_bytes: int, want: bool | None
    ) -> Progress:
        """``want`` None: live on a terminal, silent elsewhere; True: live on a terminal,
        plain lines elsewhere; False: silent."""
        tty = _isatty(stream)
        return cls(
            stream,
            verb,
            total_files,
            total_bytes,
            live=tty and want is not False,
            lines=bool(want) and not tty,
        )

    # -- events ------------------------------------------------------------------------

    def start_item(self, name: str, sizes: list[int]) -> None:
        self.files_before += len(self.sizes)
        self.items += 1
        self.current, self.sizes, self.item_bytes = name, list(sizes), 0
        if self.lines:
            self._write(
                f"{self.verb} {self.items}: {name} ({len(sizes)} file(s), "
                f"{human_bytes(sum(sizes))})\n"
            )
        self._draw(force=True)

    def add_bytes(self, n: int) -> None:
        self.item_bytes += n
        self.bytes_done += n
        self._draw()

    def clear(self) -> None:
        """Take the live line away (before someone else writes a line to the terminal;
        the next update draws it again)."""
        if self.live and self._width:
            self._write("\r" + " " * self._width + "\r")
            self._width = 0
            self._drawn = 0.0

    def finish(self, summary: str | None = None) -> None:
        """Clear the live line; print ``summary`` (or the totals) in lines mode."""
        self.files_before += len(self.sizes)
        self.sizes = []
        self.clear()
        if self.lines:
            self._write((summary or self.totals()) + "\n")

    # -- text --------------------------------------------------------------------------

    def files_done(self) -> int:
        """Files of earlier items, and the current item's files its bytes have covered
        (its files are transferred in order)."""
        done, covered = self.files_before, 0
        for size in self.sizes:
            covered += size
            if covered > self.item_bytes or (size == 0 and covered == self.item_bytes == 0):
                break
            done += 1
        return done

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        total = self.total_bytes
        pct = f" ({min(100, 100 * self.bytes_done // total)}%)" if total else ""
        return (
            f"{self.verb} {self.items}: {self.current} | {self.files_done()} of "
            f"{self.total_files} files, {human_bytes(self.bytes_done)} of "
            f"{human_bytes(total)}{pct}, {human_bytes(self.rate())}/s"
        )

    def totals(self) -> str:
        elapsed = self.clock() - self.started
        return (
            f"{self.verb}: done, {self.items} item(s), {self.files_before} file(s), "
            f"{human_bytes(self.bytes_done)} in {elapsed:.0f} s ({human_bytes(self.rate())}/s)"
        )

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = self.clock()
        if not force and now - self._drawn < REDRAW_EVERY:
            return
        self._drawn = now
        columns = _columns(self.stream) - 1
        text = self.line()
        if len(text) > columns:
            text = text[: max(0, columns - 3)] + "..."
        pad = max(0, self._width - len(text))
        self._write("\r" + text + " " * pad)
        self._width = len(text)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal never fails the import
            self.live = self.lines = False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size((80, 24)).columns


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
