"""Start a child as a terminal's foreground job would run: with the default SIGINT disposition."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """`preexec_fn` for Ctrl-C tests: a shell's background job (CI run with `&`) inherits an ignored SIGINT,
    and Python then installs no KeyboardInterrupt handler, so the signal the test sends would be ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
