"""Terminal modes chatcli sets while it writes, and puts back: Ctrl-Z and key echo.

:class:`SuspendGuard` restores the terminal when the user stops chatcli with Ctrl-Z and sets it
up again on ``fg``; :class:`QuietTerminal` switches off the echo of keys typed while chatcli
writes. :func:`keys_one_at_a_time` sets it up for a one-key question (a menu, consent).
:func:`call_later` schedules a redraw or flush on the running event loop, if any.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class SuspendGuard:
    """Ctrl-Z (SIGTSTP) while chatcli has the terminal in a mode of its own: ``before_stop``
    puts it back as it was, the process stops, and ``after_resume`` sets it up again on
    ``fg``. Guards nest: each calls the one installed before it, which does the stopping."""

    def __init__(self, before_stop: Any, after_resume: Any) -> None:
        self._before, self._after = before_stop, after_resume
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        import signal
        import threading

        if not hasattr(signal, "SIGTSTP") or threading.current_thread() is not (
            threading.main_thread()
        ):
            return  # no job control here, or not where signal handlers can be set
        try:
            self._previous = signal.signal(signal.SIGTSTP, self._handle)
        except (ValueError, OSError):
            return
        self._installed = True

    def remove(self) -> None:
        if self._installed:
            import signal

            self._installed = False
            signal.signal(signal.SIGTSTP, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        import os
        import signal

        self._before()
        try:
            previous = self._previous
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signal.SIGTSTP, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT (fg, bg)
        finally:
            if self._installed:
                signal.signal(signal.SIGTSTP, self._handle)
            self._after()


@contextmanager
def keys_one_at_a_time(fd: int, *, quit_key: bool = True) -> Iterator[None]:
    """The terminal ``fd`` set to read a question's key: one at a time, unechoed. Keys typed
    before the question was shown are dropped (TCSAFLUSH: never taken for the answer); Ctrl-C
    still interrupts (ISIG kept); Ctrl-Z gives the shell the terminal as it was, and ``fg``
    sets it up again. Left as it was found. ``quit_key=False`` turns Ctrl-\\ off (it would
    kill chatcli before it restores the terminal)."""
    import termios

    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[3] &= ~(termios.ICANON | termios.ECHO)
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    if not quit_key:
        mode[6][termios.VQUIT] = b"\0"
    termios.tcsetattr(fd, termios.TCSAFLUSH, mode)
    guard = SuspendGuard(
        lambda: termios.tcsetattr(fd, termios.TCSANOW, saved),
        lambda: termios.tcsetattr(fd, termios.TCSAFLUSH, mode),
    )
    guard.install()
    try:
        yield
    finally:
        guard.remove()
        termios.tcsetattr(fd, termios.TCSANOW, saved)


class QuietTerminal:
    """Keys typed while chatcli writes are not echoed (and, with ``keep_enter``, Enter is not
    turned into Ctrl-J) until :meth:`restore` puts the terminal back as it was.

    The live region: keys typed during an answer, and the ``^C`` a terminal echoes for
    Ctrl-C, would land inside it and shift the cursor under Rich, which then leaves stale
    lines. The REPL between prompts: see ``chatcli.repl``. Changed with TCSANOW, never
    TCSAFLUSH: keys typed ahead are kept. Without a POSIX terminal, nothing happens.
    """

    def __init__(self, fd: int | None, *, keep_enter: bool = False) -> None:
        self._fd = fd
        self._keep_enter = keep_enter
        self._saved: list[Any] | None = None

    @classmethod
    def of(cls, stream: object) -> QuietTerminal:
        try:
            fd: int | None = stream.fileno()  # type: ignore[attr-defined]
        except (AttributeError, ValueError, OSError):
            fd = None
        return cls(fd)

    @property
    def active(self) -> bool:
        return self._saved is not None

    def off(self) -> None:
        if self._fd is None:
            return
        try:
            import termios

            saved = termios.tcgetattr(self._fd)
            quiet = list(saved)
            if self._keep_enter:
                # Keys kept as typed, for the prompt to read: Enter stays CR (not Ctrl-J), and
                # out of line mode Ctrl-D is a key too (in line mode it is an end of file that
                # no one reads, lost by the time the prompt starts).
                quiet[0] &= ~termios.ICRNL
                quiet[3] &= ~termios.ICANON
                quiet[6] = list(quiet[6])
                quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
            quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
            termios.tcsetattr(self._fd, termios.TCSANOW, quiet)
        except (ImportError, OSError):  # no termios (Windows), or not a terminal
            return
        self._saved = saved

    def restore(self) -> None:
        if self._saved is None or self._fd is None:
            return
        try:
            import termios

            termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
        except (ImportError, OSError):
            pass
        self._saved = None


def call_later(delay: float, callback: Any) -> bool:
    """Run ``callback`` after ``delay`` on the running event loop; ``False`` if there is none."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    loop.call_later(delay, callback)
    return True
