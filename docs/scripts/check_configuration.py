"""Checks docs/configuration.md against `ns-train ovs3d --help` (and `... ovs3d-data --help`).

Every table row of docs/configuration.md that starts with a flag in backticks and has a
default in backticks in its second column (| `--flag` | `default` | ...) is compared with
the default that `--help` prints for that flag. Exit status 1 on any mismatch or unknown flag.

    python docs/scripts/check_configuration.py              # check
    python docs/scripts/check_configuration.py --dump       # print every flag, default and help

Flags under `ovs3d-data` are written `ovs3d-data --flag` in the table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

DOC = Path(__file__).resolve().parents[1] / "configuration.md"
OPTION = re.compile(r"^│ (--[A-Za-z0-9_.-]+)(?: (.*?))?\s*│$")
HELP = re.compile(r"^│ {7}(.*?)\s*│$")
ROW = re.compile(r"^\|\s*`((?:ovs3d-data )?--[A-Za-z0-9_.-]+)`\s*\|\s*`([^`]*)`\s*\|")


def parse_help(args: list) -> Dict[str, Tuple[str, str]]:
    """flag -> (default, help text) from tyro's boxed help printed in one 80-column column."""
    env = dict(os.environ, COLUMNS="80", CUDA_VISIBLE_DEVICES="")
    text = subprocess.run(args, capture_output=True, text=True, env=env, check=True).stdout
    options: Dict[str, list] = {}
    current = None
    for line in text.splitlines():
        match = OPTION.match(line)
        if match:
            current = match.group(1)
            options[current] = []
            continue
        match = HELP.match(line)
        if match and current is not None:
            options[current].append(match.group(1))
        elif not line.startswith("│ "):
            current = None
    parsed = {}
    for flag, lines in options.items():
        help_text = " ".join(lines)
        default = re.search(r".*\(default:\s*(.*)\)\s*$", help_text)  # the last one
        parsed[flag] = (default.group(1).strip() if default else "", help_text)
    return parsed


def main() -> int:
    flags = parse_help(["ns-train", "ovs3d", "--help"])
    flags.update(
        {f"ovs3d-data {k}": v for k, v in parse_help(["ns-train", "ovs3d", "ovs3d-data", "--help"]).items()}
    )
    if "--dump" in sys.argv:
        for flag, (default, help_text) in flags.items():
            print(f"{flag}\n    default: {default}\n    {help_text}")
        return 0
    errors, checked = [], 0
    for number, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), start=1):
        match = ROW.match(line)
        if not match:
            continue
        flag, documented = match.groups()
        checked += 1
        if flag not in flags:
            errors.append(f"line {number}: {flag} is not an option of ns-train ovs3d")
        elif flags[flag][0] != documented:
            errors.append(f"line {number}: {flag} documented default `{documented}`, --help says `{flags[flag][0]}`")
    for error in errors:
        print(error)
    print(f"{checked} documented defaults checked, {len(errors)} mismatches")
    return 1 if errors or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
