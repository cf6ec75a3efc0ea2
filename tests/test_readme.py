"""README.md shows exactly the two set-up commands, and .ci/run runs the README's test command and its demo-model
commands verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert "python -m monai.bundle run training --config_file configs/train.yaml" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    test_command = _setup_commands()[1]
    # the venv creation/activation is done by .ci/run itself; the install + test part must appear verbatim
    essential = test_command.split("&& ", 2)[-1] if test_command.startswith("python3 -m venv") else test_command
    assert essential in (ROOT / ".ci" / "run").read_text(), essential


def test_ci_runs_every_demo_model_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On the demo model", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line for line in block.strip().splitlines() if line.strip()]
    assert len(lines) == 5 and any("inference.yaml" in line for line in lines)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for line in lines:
        assert line in ci, line


def test_readme_documents_the_install_size_and_a_cpu_only_build():
    """Issue 23 item 8: the README's commands give a CPU-only user an ~8 GB venv (CUDA builds); it says so and shows
    the CPU-only torch install, outside the two set-up commands."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install size", 1)[1].split("\n## ", 1)[0]
    assert "8 GB" in section
    assert "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu" in section
    assert all("--index-url" not in command for command in _setup_commands())
