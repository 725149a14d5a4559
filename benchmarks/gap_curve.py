"""How the share of the gap recovered grows with the student's epochs, and with the teacher's.

The plain loop's recipe inside the pipeline (the ``all_data`` step of ``recipe_ablation.py``: one-cycle, batch 100,
teacher lr 0.1, the last epoch, 99% of the data), seed 0. ``--epochs``: one teacher (30 epochs), the distilled
student and its hard-label baseline trained for each count. ``--teacher-epochs``: teachers trained for each count,
students for 20 epochs (the baseline does not depend on the teacher and is reused from disk). Every model is reused
from the shared output folder when its settings match.

    python benchmarks/gap_curve.py [--epochs 20 40 80] [--teacher-epochs 60 120]
"""

from __future__ import annotations

import argparse

from recipe_ablation import OUT, overrides_up_to, record, run_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", nargs="*", type=int, default=[20, 40, 80])
    parser.add_argument("--teacher-epochs", nargs="*", type=int, default=[])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    for epochs in args.epochs:
        point(f"curve_student{epochs}", "student", epochs, args.force)
    for epochs in args.teacher_epochs:
        point(f"curve_teacher{epochs}", "ensemble", epochs, args.force)


def point(name: str, who: str, epochs: int, force: bool) -> None:
    """One point of a curve: the ``all_data`` recipe with ``<who>.train.epochs`` set to ``epochs``."""
    key = f"{name}_seed0"
    if (OUT / f"{key}.json").is_file() and not force:
        return
    setting = f"{who}.train.epochs="
    overrides = [o for o in overrides_up_to("all_data") if not o.startswith(setting)] + [f"{setting}{epochs}"]
    print(f"[{key}] {' '.join(overrides)}", flush=True)
    record(key, {**run_step(name, 0, overrides), f"{'student' if who == 'student' else 'teacher'}_epochs": epochs})


if __name__ == "__main__":
    main()
