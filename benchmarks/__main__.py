"""The benchmark suite's entry point, from the repository root.

::

    python -m benchmarks list                        # the scripts, their --quick and results
    python -m benchmarks run NAME [--quick] [ARGS]   # python benchmarks/NAME.py [--quick] ARGS
    python -m benchmarks render [NAME ...]           # RESULTS.md from benchmarks/results/
    python -m benchmarks render --check              # exit 1 if RESULTS.md is out of date
    python -m benchmarks import-recorded [NAME ...]  # RESULTS.md's sections into results/
    python -m benchmarks import-recorded NAME --run benchmarks/output/NAME/results.json

A full run (not ``--quick``) stores its section as ``benchmarks/results/<section>.json`` and
updates ``benchmarks/RESULTS.md``; ``render`` rebuilds the file from the stored results.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts' own imports

import _harness as h  # noqa: E402
import _suite  # noqa: E402


def _list(args: argparse.Namespace) -> int:
    _, records = _suite.load_results(h.results_dir(args.results_md))
    sections: dict[str | None, list[str]] = {}
    for rec in records:
        sections.setdefault(rec.get("script"), []).append(rec["section"])
    rows = []
    for name in _suite.scripts():
        info = _suite.script_info(name)
        rows.append(
            (
                name,
                "yes" if info["quick"] else "no",
                ", ".join(sections.get(f"{name}.py", [])) or "-",
                info["doc"],
            )
        )
    widths = [
        max(len(r[i]) for r in [("script", "--quick", "results", ""), *rows]) for i in (0, 1)
    ]
    print(f"{'script':<{widths[0]}}  {'--quick':<{widths[1]}}  results / description")
    for name, quick, results, doc in rows:
        print(f"{name:<{widths[0]}}  {quick:<{widths[1]}}  [{results}] {doc}")
    loose = [s for key, names in sections.items() if key is None for s in names]
    if loose:
        print(f"\nsections without a script: {', '.join(loose)}")
    return 0


def _render(args: argparse.Namespace) -> int:
    changed = _suite.render(args.results_md, args.names, check=args.check)
    if args.check:
        if changed:
            print(
                f"{args.results_md} differs from {h.results_dir(args.results_md)} in: "
                f"{', '.join(changed)}\nrun `python -m benchmarks render` (or, to keep the "
                "file's text, `python -m benchmarks import-recorded NAME`)",
                file=sys.stderr,
            )
            return 1
        print(f"{args.results_md} is up to date")
        return 0
    print(f"changed: {', '.join(changed)}" if changed else "nothing changed")
    return 0


def _import(args: argparse.Namespace) -> int:
    changed = _suite.import_recorded(args.results_md, args.names, args.run)
    print(f"stored: {', '.join(changed)}" if changed else "nothing to store")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite's command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.strip().splitlines()[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--results-md",
        type=Path,
        default=h.RESULTS_MD,
        help="the results file; its stored results are in results/ beside it "
        "(default benchmarks/RESULTS.md)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the scripts, whether they have --quick, their stored results")
    r = sub.add_parser("run", help="run benchmarks/NAME.py with this interpreter")
    r.add_argument("name")
    r.add_argument("args", nargs=argparse.REMAINDER, help="passed on (--quick, --threads 1...)")
    rd = sub.add_parser("render", help="rebuild RESULTS.md (or sections) from results/")
    rd.add_argument("names", nargs="*", help="only these sections")
    rd.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    im = sub.add_parser("import-recorded", help="store RESULTS.md's sections in results/")
    im.add_argument("names", nargs="*", help="only these sections")
    im.add_argument(
        "--run",
        type=Path,
        default=None,
        help="with one NAME: the results.json of the run that wrote it, stored with its text",
    )
    if argv[:1] == ["run"] and len(argv) > 1:  # everything after NAME belongs to the script
        return _suite.run(argv[1], argv[2:])
    args = p.parse_args(argv)
    if args.cmd == "run":
        return _suite.run(args.name, args.args)
    return {"list": _list, "render": _render, "import-recorded": _import}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
