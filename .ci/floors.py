"""Print the project's dependencies pinned at their declared lower bounds (``name==floor``), one a line.

CI's floor stage installs exactly these, so the floors in pyproject.toml are versions that really
install and work together. torch keeps the version CI installs first (``--torch``): its floor is a
range we do not test against a second CPU build.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import tomllib

LOWER = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(?:>=\s*([^,;\s]+))?")


def floors(pyproject: Path, torch: str, extras: list[str], loose: list[str]) -> list[str]:
    """Pins for the dependencies and the `extras` groups; the `loose` groups' specs as declared."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    pinned = {LOWER.match(spec).group(1) for spec in specs}
    pins = [spec for group in loose for spec in project["optional-dependencies"][group]
            if LOWER.match(spec).group(1) not in pinned]
    for spec in specs:
        name, lower = LOWER.match(spec).groups()
        if name == "torch":
            pins.append(f"torch=={torch}")
        elif lower is None:
            raise SystemExit(f"Expected a '>=' lower bound for every dependency, but got {spec!r}. Add one.")
        else:
            pins.append(f"{name}=={lower}")
    return pins


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--torch", required=True, help="the torch version CI installs")
    parser.add_argument("--extra", action="append", default=[], help="also pin this optional-dependency group")
    parser.add_argument("--loose", action="append", default=[], help="add this group's specs unpinned (test tools)")
    args = parser.parse_args()
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    print("\n".join(floors(pyproject, args.torch, args.extra, args.loose)))
