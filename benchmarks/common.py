"""Helpers shared by the benchmark scripts: dataset location, JSON output, machine description."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LOOKALIKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def require_dataset(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        sys.exit(f"dataset missing: {path} (set LOOKALIKE_SHARED_DATA to the folder holding the shared datasets)")
    return path


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}


def write_json(name: str, payload: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2)
    (RESULTS / name).write_text(text + "\n")
    print(text)
