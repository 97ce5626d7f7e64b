#!/usr/bin/env python3
"""Copies user-data.sh and the SSM documents into berth.yaml, or checks that the copies match.

    python3 launch-template/embed.py           # rewrite berth.yaml's embedded copies
    python3 launch-template/embed.py --check   # exit 1, with a diff, when a copy is stale

The two files are the sources of truth: CloudFormation has no way to include a file, so the
template carries copies between marker lines, and this keeps them equal. A copy is the file's
text, indented like its begin marker; user-data.sh loses its first line (the shebang), since the
template's user-data starts with its own.
"""

import difflib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "berth.yaml"

# (file, lines of it to skip at the top)
SOURCES = [("user-data.sh", 1), ("ssm-berth-upgrade.yaml", 0), ("ssm-berth-operations.yaml", 0)]


def begin_marker(name):
    return f"# ---- begin {name} (copied by embed.py: edit that file, then run embed.py) ----"


def end_marker(name):
    return f"# ---- end {name} ----"


def embed(text, name, skip):
    lines = text.split("\n")
    begin = [i for i, line in enumerate(lines) if line.strip() == begin_marker(name)]
    end = [i for i, line in enumerate(lines) if line.strip() == end_marker(name)]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        sys.exit(f"embed.py: berth.yaml needs exactly one begin and one end marker for {name}")
    start, stop = begin[0], end[0]
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    body = (HERE / name).read_text().split("\n")[skip:]
    if body and body[-1] == "":
        body.pop()
    # Empty lines stay empty: YAML block scalars and mappings allow that, and editors like it.
    copy = [indent + line if line else "" for line in body]
    return "\n".join(lines[: start + 1] + copy + lines[stop:])


def main():
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        sys.exit("usage: embed.py [--check]")
    current = TEMPLATE.read_text()
    wanted = current
    for name, skip in SOURCES:
        wanted = embed(wanted, name, skip)
    if wanted == current:
        print("embed.py: berth.yaml's copies of " + " and ".join(n for n, _ in SOURCES) + " match")
        return
    if check:
        diff = difflib.unified_diff(
            current.splitlines(), wanted.splitlines(), "berth.yaml", "berth.yaml (expected)", lineterm=""
        )
        print("\n".join(diff))
        sys.exit("embed.py: berth.yaml is stale; run python3 launch-template/embed.py")
    TEMPLATE.write_text(wanted)
    print("embed.py: updated berth.yaml")


if __name__ == "__main__":
    main()
