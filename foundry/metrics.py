"""Run metrics: one JSON object per line in ``OUT/metrics.jsonl``, appended and flushed as they
come so a crash keeps everything logged before it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, disk_full_as_error


class MetricsLog:
    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        if truncate_after_step is not None and self.path.exists():
            # On resume, drop lines logged after the checkpoint: they will be produced again. The
            # rewrite is atomic: a kill during it leaves the old log, never an empty one.
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= truncate_after_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._handle = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with disk_full_as_error(self.path):
            self._handle.write(json.dumps(clean) + "\n")
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _step_of(line: str) -> float:
    """The step of a logged line; a line cut short by a crash sorts after every step (dropped)."""
    try:
        return json.loads(line).get("step", 0) if line.strip() else float("inf")
    except json.JSONDecodeError:
        return float("inf")
