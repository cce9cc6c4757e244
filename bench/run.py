"""Run every benchmark module in ``bench/`` (``make bench``).

A benchmark is a ``bench/*.py`` module (not starting with ``_``, not this file) with a
``main()`` that prints its results, writes ``bench/results/<name>.json`` and returns whether
its targets held: ``True``/``False``, or an exit status (0 = held), or ``None`` (no targets).
Exits 1 when a benchmark missed a target or crashed.
``python bench/run.py predict`` runs only the named ones.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def modules(names: list[str]) -> list[Path]:
    found = sorted(
        p
        for p in HERE.glob("*.py")
        if p.name != "run.py" and not p.name.startswith("_") and is_benchmark(p)
    )
    if names:
        found = [p for p in found if p.stem in names]
        missing = set(names) - {p.stem for p in found}
        if missing:
            raise SystemExit(f"error: no benchmark named {', '.join(sorted(missing))}")
    return found


def held(value: object) -> bool:
    """A benchmark's verdict: a bool as is, an int as an exit status, None as no targets."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 0
    return value is None


def run(path: Path) -> bool:
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in a benchmark look their module up here
    spec.loader.exec_module(module)
    return held(module.main())


def is_benchmark(path: Path) -> bool:
    """A benchmark module defines ``main``; the others (the fleet simulator) are its helpers."""
    return "\ndef main(" in path.read_text()


def main(argv: list[str]) -> int:
    results: dict[str, str] = {}
    for path in modules(argv):
        print(f"== {path.stem}", flush=True)
        try:
            results[path.stem] = "PASS" if run(path) else "FAIL"
        except Exception:
            traceback.print_exc()
            results[path.stem] = "ERROR"
    print("== summary: " + ", ".join(f"{k} {v}" for k, v in results.items()))
    return 0 if all(v == "PASS" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
