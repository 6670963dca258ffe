"""``tfseg COMMAND [ARGS]``: the console entry point, one command per ``python -m tfseg.X``.

``tfseg train --config configs/landcover_dubai.yaml`` runs exactly what
``python -m tfseg.train --config configs/landcover_dubai.yaml`` runs (same arguments, output
and exit codes); ``tfseg --help`` lists the commands, ``tfseg COMMAND --help`` their arguments.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("tfseg.train", "train a model from a config into a run directory"),
    "evaluate": ("tfseg.evaluate", "pixel and object scores of a model or of predictions"),
    "predict": ("tfseg.predict", "whole scenes -> georeferenced masks, probabilities, polygons"),
    "export": ("tfseg.export", "a run -> self-describing SavedModel (TF Serving) or TFLite"),
    "serve": ("tfseg.serve", "serve SavedModels over the TF Serving REST API"),
    "compare": ("tfseg.compare", "runs side by side: table, curves, HTML report"),
    "bench": ("tfseg.bench.__main__", "benchmarks against a baseline measured in the same run"),
    "model-card": ("tfseg.model_card", "show or upgrade a run's model card"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: tfseg COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) + (
        "\n\n`tfseg COMMAND --help` for a command's arguments; each is also `python -m tfseg.COMMAND`.")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"tfseg {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command {argv[0]!r}; expected one of {sorted(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(command[0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
