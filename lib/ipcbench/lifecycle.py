"""Things that start on entering a ``with`` block and are always stopped again, SIGTERM included."""

from __future__ import annotations

import signal
import threading


class AlwaysStopped:
    """A context manager base: ``__enter__`` calls ``start()``, and ``stop()`` runs on every way out (success, an
    exception, Ctrl-C, and ``kill`` -- SIGTERM becomes KeyboardInterrupt while the block runs). Subclasses define
    ``start`` and an idempotent ``stop``."""

    _old_sigterm = None

    def start(self) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def __enter__(self):
        self._install_sigterm()
        try:
            self.start()
        except BaseException:
            self.stop()
            self._restore_sigterm()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.stop()
        finally:
            self._restore_sigterm()

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into KeyboardInterrupt while the block runs (main thread only), so `kill` also tears down."""
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread():

            def _on_term(signum, frame):
                raise KeyboardInterrupt(f"signal {signum}")

            self._old_sigterm = signal.signal(signal.SIGTERM, _on_term)

    def _restore_sigterm(self) -> None:
        old = self._old_sigterm
        if old is not None:
            signal.signal(signal.SIGTERM, old)
            self._old_sigterm = None
