"""The README's two commands are what CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    cmds = [l.strip() for b in blocks[:2] for l in b.splitlines() if l.strip() and not l.startswith("#")]
    install_and_demo, tests = cmds[0], cmds[1]
    ci = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    install = install_and_demo.split(" && ")[0]
    assert install in ci, (install, ci)
    assert tests in ci, (tests, ci)
    assert "edgehydra demo" in install_and_demo
    assert not any("|| true" in l for l in ci), "CI must not hide a failing (or empty) test run"
