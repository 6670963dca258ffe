"""Helpers of the pipeline tests."""
from __future__ import annotations

import json


def printed_json(out: str) -> dict:
    """The metrics JSON a pipeline prints last (tfseg.export prints a line before it)."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))
