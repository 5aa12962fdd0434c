"""Where benchmark scripts put their numbers: ``benchmarks/results/<name>.json``, and a copy under
``$OUT`` when set (the device tool brings ``$OUT`` back from the GPU machine)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import triton


def save_results(name: str, payload: dict) -> Path:
    """Write ``payload`` plus the GPU, torch and Triton versions as JSON; returns the results path."""
    text = json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, **payload}, indent=1)
    path = Path(__file__).parent / "results" / f"{name}.json"
    path.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"{name}.json").write_text(text)
    return path
