"""The README lists every server setting and names commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    env = (ROOT / "deploy" / "env.example").read_text()
    names = re.findall(r"^(DREAMLITE_[A-Z0-9_]+)=", env, flags=re.MULTILINE)
    assert len(names) > 30
    missing = [name for name in names if f"`{name}`" not in readme]
    assert not missing, f"README lacks settings: {missing}"


def test_readme_commands_exist() -> None:
    from dreamlite.cli import build_parser

    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"^\s*dreamlite ([a-z-]+)", readme, flags=re.MULTILINE))
    assert used, "the README shows dreamlite commands"
    assert used <= commands, f"README uses unknown commands: {used - commands}"
    assert "./scripts/serve" in readme
    assert "./scripts/test" in readme
