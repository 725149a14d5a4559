"""How the share of the gap recovered grows with the student's epochs: one teacher, students trained longer.

The plain loop's recipe inside the pipeline (the ``all_data`` step of ``recipe_ablation.py``: one-cycle, batch 100,
teacher lr 0.1, the last epoch, 99% of the data), 30 teacher epochs, seed 0; the distilled student and its hard-label
baseline trained for each of ``--epochs``. The teacher is trained once and reused from the shared output folder.

    python benchmarks/gap_curve.py [--epochs 20 40 80]
"""

from __future__ import annotations

import argparse

from recipe_ablation import OUT, overrides_up_to, record, run_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", nargs="*", type=int, default=[20, 40, 80])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    base = overrides_up_to("all_data")
    for epochs in args.epochs:
        key = f"curve_student{epochs}_seed0"
        if (OUT / f"{key}.json").is_file() and not args.force:
            continue
        overrides = [o for o in base if not o.startswith("student.train.epochs=")] + [f"student.train.epochs={epochs}"]
        print(f"[{key}] {' '.join(overrides)}", flush=True)
        record(key, {**run_step(f"curve_student{epochs}", 0, overrides), "student_epochs": epochs})


if __name__ == "__main__":
    main()
