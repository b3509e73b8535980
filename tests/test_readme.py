"""The README stays true: CI runs its test command verbatim, the main command names the entry point and
preset that exist, its links lead somewhere, and the generated results (docs/results.md and the README's
summary) are exactly what the committed JSON under bench/results/ renders to."""
import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _render_results():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "scripts" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_results = _render_results()


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


def _relative_links(markdown_file: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown_file.read_text())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_links_in_the_readme_and_docs_lead_to_files_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5, "docs/ holds the architecture, losses, kernels, toolchain and results pages"
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in pages for target in _relative_links(page)
              if not (page.parent / target).exists()]
    assert not broken, broken


def test_committed_results_page_and_readme_summary_match_the_committed_json():
    page = (ROOT / "docs" / "results.md").read_text()
    assert page == render_results.render(), "docs/results.md is stale: run python scripts/render_results.py"
    readme = (ROOT / "README.md").read_text()
    summary = render_results.summary()
    assert render_results.replace_section(readme, summary, render_results.SUMMARY_BEGIN,
                                          render_results.SUMMARY_END) == readme, \
        "README.md's results summary is stale: run python scripts/render_results.py"


def test_render_results_writes_the_page_and_the_summary_then_checks_them(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{render_results.SUMMARY_BEGIN}\nold\n{render_results.SUMMARY_END}\n\n## After\n")
    results = tmp_path / "results"
    results.mkdir()
    record = dict(command="python bench/loaders.py", device="cpu (2 cores)", time="2026-01-01T00:00:00",
                  dataset="cifar10", images_per_epoch=10, batch_size=2, policy="default",
                  results=[dict(loader="torch", pairs_per_s=100.0), dict(loader="resident", pairs_per_s=5432.0)])
    (results / "loaders-1.json").write_text(json.dumps(record))
    args = ["--readme", str(readme), "--results", str(results)]

    assert render_results.main(args + ["--check"]) == 1      # no page yet, old summary
    assert render_results.main(args) == 0
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "| resident | 5,432 | 54.32x |" in page
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n") and text.endswith("\n\n## After\n") and "old" not in text
    assert "| Loaders (`bench/loaders.py`) | 2026-01-01, [loaders-1.json]" in text
    assert "](docs/results.md)" in text
    assert render_results.main(args + ["--check"]) == 0

    (tmp_path / "docs" / "results.md").write_text("edited by hand\n")
    assert render_results.main(args + ["--check"]) == 1
    readme.write_text("no markers\n")
    assert render_results.main(args) == 2 and "exactly one" in capsys.readouterr().err
