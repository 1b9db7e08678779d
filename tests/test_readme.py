"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    test = next(line for line in ci.splitlines() if "-m pytest" in line)
    assert install.split(" || ")[0] in readme
    assert test in readme
