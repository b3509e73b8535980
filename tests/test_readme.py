"""The README's quickstart stays true: CI runs its test command verbatim, and the main command
names the entry point and preset that exist."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    return [line.strip() for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith("    python3 -m venv .venv")]


def test_readme_has_two_quickstart_commands():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert commands[0].endswith("scripts/pretrain.py --method dare --fast")
    assert commands[1].endswith("pytest -q")


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert quickstart_commands()[1] in ci_lines
