"""Progress bars for the CLI (tqdm), silent when output is not a terminal.

Logs and CI output stay clean: a bar redraws with carriage returns, which in a file or a pipe is noise.
Library code reports progress through logging and the Watch streams; only the CLI draws bars.
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(total: int | None, desc: str = "", *, stream: IO[str] | None = None,
                 disable: bool | None = None, unit: str = "it") -> tqdm:
    """A tqdm bar on `stream` (stderr by default); disabled unless the stream is a TTY or `disable` says
    otherwise. Use as a context manager and call `.update(n)`."""
    stream = stream if stream is not None else sys.stderr
    if disable is None:
        disable = not _is_tty(stream)
    return tqdm(total=total, desc=desc, file=stream, disable=disable, unit=unit, dynamic_ncols=True)
