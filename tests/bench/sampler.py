"""What the benches share: a figure sampled on a background thread while a block runs.

    from sampler import Sampler          # tests/bench on sys.path, as when a bench runs as a script

    class Peak(Sampler):
        def sample(self): self.peak = max(self.peak, measure())

    with Peak(interval=0.01) as p:
        work()
    print(p.peak)

Standard library only, and no pytest.
"""

from __future__ import annotations

import threading


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds on a daemon thread, from entering the ``with`` block
    until leaving it (the thread is joined on exit, so the last sample is in before the block's result is
    read). Subclasses set up their baseline in ``__enter__`` before calling ``super().__enter__()``, and
    read device-side figures in ``__exit__`` after ``super().__exit__()``."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
