"""Helpers shared by the benchmark scripts: data, a results table and a JSON record."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def mnist(train_limit: int | None = None):
    from ensemble.data.registry import load_dataset

    return load_dataset("mnist", root=str(REPO.parent / "shared" / "data"), seed=0, train_limit=train_limit)


def machine() -> dict:
    return {"platform": platform.platform(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def report(name: str, rows: list[dict], summary: dict) -> Path:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=name)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()])
    console = Console()
    console.print(table)
    for key, value in summary.items():
        console.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"rows": rows, "summary": summary, "machine": machine()}, indent=2))
    console.print(f"wrote {path.relative_to(REPO)}")
    return path
