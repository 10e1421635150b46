"""`convert-role`: one role, or every role of a roles directory (`--all`), to services plus a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converters import report
from converters.convert import Conversion, convert, write


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert-role",
        description="Turn Ansible roles into services that `directord orchestrate` runs natively.",
    )
    parser.add_argument("role", type=Path, help="a role directory, or with --all a directory of roles")
    parser.add_argument("--all", action="store_true", help="convert every role under ROLE (a roles directory)")
    parser.add_argument("-o", "--output", type=Path,
                        help="where to write: the service directory (with --all: one subdirectory per role); "
                             "default ./converted/ROLE_NAME (or ./converted)")
    parser.add_argument("--report", choices=("md", "json"), default="md", help="coverage report format (stdout)")
    parser.add_argument("--report-file", type=Path, help="also write the report to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.all:
        if not args.role.is_dir():
            print(f"convert-role: {args.role}: not a directory", file=sys.stderr)
            return 2
        roles = sorted(p for p in args.role.iterdir() if p.is_dir() and not p.name.startswith("."))
        out = args.output or Path("converted")
        conversions = [_one(role, out / role.name) for role in roles]
    else:
        conversions = [_one(args.role, args.output or Path("converted") / args.role.name)]
    text = report.as_json(conversions) if args.report == "json" else report.as_markdown(conversions)
    sys.stdout.write(text)
    if args.report_file:
        args.report_file.write_text(text)
    failed = [c for c in conversions if c.error]
    for conversion in failed:
        print(f"convert-role: {conversion.error}", file=sys.stderr)
    return (2 if not args.all else 1) if failed else 0


def _one(role: Path, out: Path) -> Conversion:
    conversion = convert(role)
    if not conversion.error:
        write(conversion, out)
    return conversion


if __name__ == "__main__":
    sys.exit(main())
