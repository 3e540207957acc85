"""A Hydra callback for tests: each job of ``seeds`` waits at its start until all of them have started.

Proves that jobs run at the same time (a sequential launcher times out here, failing the job).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class Barrier(Callback):
    def __init__(self, folder: str, seeds: list[int], timeout_s: float = 180.0) -> None:
        self.folder, self.seeds, self.timeout_s = Path(folder), [int(s) for s in seeds], float(timeout_s)
        self.parties = len(self.seeds)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if int(config.seed) not in self.seeds:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{os.getpid()}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        deadline = time.monotonic() + self.timeout_s
        while len(list(self.folder.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(list(self.folder.iterdir()))} of {self.parties} jobs ever ran at once")
            time.sleep(0.1)
