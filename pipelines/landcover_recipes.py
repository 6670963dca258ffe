"""Land-cover recipes compared on the Dubai split at the same time budget, as one command.

``python -m pipelines.landcover_recipes [--recipes unet,unet-resnet34,...] [--max-minutes M]
[--run-dir runs/landcover_recipes] [--data-root DIR] [--doc docs/results_landcover.md] [--quick]
[--set KEY=VALUE ...]``

Runs ``pipelines/landcover.py --recipe NAME`` for each recipe (default: all of
``landcover.RECIPES``) into ``RUN_DIR/<recipe>``, every one with ``train.max_minutes=M``
(default: the config's), then writes the table (held-out mIoU over the five real classes, per-class
IoU, epochs run, stop reason, training time, load average) to ``RUN_DIR/recipes.md`` and, between
the ``<!-- recipes:begin -->`` / ``<!-- recipes:end -->`` markers, into ``--doc`` (default
``docs/results_landcover.md``; ``--quick`` writes only ``RUN_DIR/recipes.md`` unless ``--doc``
is given). A recipe already finished in RUN_DIR is resumed/re-evaluated, not retrained.
Run it on a quiet machine: the budget is wall time, so other load means fewer epochs.

Example:
    nice -n 10 python -m pipelines.landcover_recipes --max-minutes 12
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the pipelines are modules of the checkout
    sys.exit("run it from the repository root as: python -m pipelines.landcover_recipes [ARGS]")

from pipelines import _common as common  # noqa: E402
from pipelines import landcover  # noqa: E402

BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"
DOC = common.REPO / "docs" / "results_landcover.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:  # pragma: no cover - not on Linux
        pass
    return f"{platform.processor() or platform.machine()} x {os.cpu_count()}"


ABSENT = "–"  # a class absent from the held-out truth and prediction (null in pipeline.json)


def _score(value) -> str:
    return ABSENT if value is None else f"{value:.3f}"


def table(summaries: list, max_minutes) -> str:
    """The markdown table of the recipe runs (one row per pipeline.json summary); a score that is
    ``null`` (the class absent from truth and prediction) shows as "–"."""
    classes = landcover.REAL_CLASSES + ["unlabeled"]
    head = ("| recipe | mIoU (5 real classes) | " + " | ".join(f"{c} IoU" for c in classes)
            + " | epochs run (stop) | training s | load average start / end |")
    lines = [f"Budget `train.max_minutes={max_minutes}` for every recipe; CPU: {cpu_model()}.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for s in summaries:
        m, t = s["metrics"], s["train"]
        per_class = " | ".join(_score(m["per_class_iou"][c]) for c in classes)
        lines.append(f"| `{s['recipe']}` | **{_score(m['miou_real'])}** | {per_class} | {t['epochs']} "
                     f"({t.get('stop_reason')}) | {t['train_seconds']:.0f} | {s['load_average_start']} / "
                     f"{s['load_average_end']} |")
    return "\n".join(lines) + "\n"


def write_into(doc: Path, text: str) -> None:
    """Replace the text between the recipe markers of ``doc`` (appended with them if absent)."""
    body = doc.read_text() if doc.is_file() else ""
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in body and END in body:
        body = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(body)


def run(args) -> dict:
    names = [n.strip() for n in args.recipes.split(",") if n.strip()] if args.recipes else list(landcover.RECIPES)
    unknown = [n for n in names if n not in landcover.RECIPES]
    if unknown:
        raise common.PipelineError(f"--recipes: unknown recipe(s) {unknown}; available: {sorted(landcover.RECIPES)}")
    cfg = common.load_config(args.config or landcover.CONFIG, [])
    minutes = args.max_minutes if args.max_minutes is not None else cfg.train.max_minutes
    base = Path(args.run_dir)
    summaries = []
    for name in names:
        recipe_args = argparse.Namespace(
            data_root=args.data_root, quick=args.quick, config=args.config, run_dir=str(base / name),
            overwrite=args.overwrite, verbose=args.verbose, recipe=name,
            overrides=[f"train.max_minutes={minutes}"] + list(args.overrides))
        summaries.append(landcover.run(recipe_args))
    text = table(summaries, minutes)
    base.mkdir(parents=True, exist_ok=True)
    (base / "recipes.md").write_text(text)
    doc = Path(args.doc) if args.doc else (None if args.quick else DOC)
    if doc is not None:
        write_into(doc, text)
    print(text)
    scored = [s for s in summaries if s["metrics"]["miou_real"] is not None]
    best = max(scored, key=lambda s: s["metrics"]["miou_real"]) if scored else None
    return {"metrics": {s["recipe"]: s["metrics"]["miou_real"] for s in summaries},
            "best": best["recipe"] if best else None,
            "table": str(base / "recipes.md"), "doc": str(doc) if doc else None}


def main(argv=None) -> int:
    p = common.parser("python -m pipelines.landcover_recipes", __doc__.split("\n")[0], "runs/landcover_recipes",
                      "dataset folder (default: ../shared/data/dubai_landcover)")
    p.add_argument("--recipes", default="", help=f"comma-separated, default all: {','.join(landcover.RECIPES)}")
    p.add_argument("--max-minutes", type=float, default=None, help="train.max_minutes of every recipe")
    p.add_argument("--doc", default="", help="markdown file that gets the table (default docs/results_landcover.md)")
    return common.run_main(run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
