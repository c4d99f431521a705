"""``adasched`` run in this process as the tests call it: the exit status and stderr less its progress lines."""

import re

from adasched.cli import main

#: A progress line (adasched.progress.Lines): ``TASK: DONE/TOTAL (P%)`` or ``TASK: DONE``.
PROGRESS = re.compile(r"[^:\n]+: \d+(/\d+ \(\d+%\))?")


def run(argv, capsys) -> tuple[int, str]:
    """``(exit status, stderr without progress lines)`` of ``adasched ARGV``."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, "".join(line for line in err.splitlines(True) if not PROGRESS.fullmatch(line.rstrip("\n")))
