"""Issue 17, defect 9: every `--json` the CLI offers is documented in the README's table."""

from __future__ import annotations

from pathlib import Path

import click

from relayctl.cli.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def json_commands(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if any("--json" in p.opts for p in command.params if isinstance(p, click.Option)):
            found.append(path)
        if isinstance(command, click.Group):
            found += json_commands(command, path + " ")
    return found


def test_every_json_output_is_documented_in_the_readme_table():
    text = README.read_text()
    table = text[text.index("### `--json` shapes"):]
    table = table[:table.index("\n## ")]
    documented = {name for line in table.splitlines() if line.startswith("| `")
                  for name in line.split("|")[1].split("`")[1::2]}
    commands = json_commands(cli)
    assert len(commands) >= 15
    missing = [c for c in commands if c not in documented]
    assert missing == [], f"--json outputs the README does not document: {missing}"
