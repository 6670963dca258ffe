"""``python -m tfseg.bench NAME [--json] [options]``: run benchmark NAME (tfseg/bench/NAME.py).

Each benchmark measures against its baseline in the same process run, prints a short table, and
with ``--json`` prints one JSON object as its last line.
"""
import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("benchmarks:", ", ".join(available()))
        return 0 if argv else 2
    name = argv[0]
    if name not in available():
        print(f"error: unknown benchmark {name!r}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    return importlib.import_module(f"tfseg.bench.{name}").main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
