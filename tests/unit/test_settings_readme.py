"""README.md's settings table is generated from gpu_llm.settings (`python -m gpu_llm.settings --write-readme`)."""

import subprocess
import sys
from pathlib import Path

import pytest

from gpu_llm import settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_readme_table_matches_the_declaration():
    text = README.read_text()
    if settings.BEGIN not in text or settings.END not in text:
        pytest.fail(f"README.md lacks the {settings.BEGIN} / {settings.END} markers around its settings table")
    if settings.readme_table(text) != settings.markdown_table():
        pytest.fail("README.md's settings table differs from gpu_llm/settings.py: "
                    "run `python -m gpu_llm.settings --write-readme`")


def _readme(tmp_path: Path, block: str) -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"# t\n\n## Settings\n\nIntro.\n\n{settings.BEGIN}\n{block}{settings.END}\n\n## Next\n")
    return path


def test_write_readme_then_check(tmp_path: Path, capsys):
    path = _readme(tmp_path, "| old | table |\n")
    assert settings.main(["--check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--write-readme" in err and "-| old | table |" in err

    assert settings.main(["--write-readme", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# t\n\n## Settings\n\nIntro.\n\n" + settings.BEGIN + "\n")
    assert text.endswith(settings.END + "\n\n## Next\n")
    assert settings.readme_table(text) == settings.markdown_table()
    assert settings.main(["--check", str(path)]) == 0
    assert settings.main(["--write-readme", str(path)]) == 0 and path.read_text() == text  # idempotent


def test_missing_markers_are_an_error(tmp_path: Path, capsys):
    path = tmp_path / "README.md"
    path.write_text("# no markers\n")
    assert settings.main(["--check", str(path)]) == 2
    assert settings.main(["--write-readme", str(path)]) == 2
    assert "markers" in capsys.readouterr().err and path.read_text() == "# no markers\n"
    with pytest.raises(ValueError, match="markers"):
        settings.readme_table(f"{settings.END}\n{settings.BEGIN}\n")  # wrong order


def test_module_runs_as_a_script(tmp_path: Path):
    path = _readme(tmp_path, "")
    run = [sys.executable, "-m", "gpu_llm.settings"]
    assert subprocess.run([*run, "--check", str(path)], cwd=ROOT, capture_output=True).returncode == 1
    assert subprocess.run([*run, "--write-readme", str(path)], cwd=ROOT, capture_output=True).returncode == 0
    done = subprocess.run([*run, "--check", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
