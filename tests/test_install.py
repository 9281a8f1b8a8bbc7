"""One truth for installing: `.ci/run` runs the README's set-up and test commands verbatim.

The README's Quick start block is the set-up command, the quick start and the test command;
CI runs all of them but the quick start (the test suite runs its own small quick start), in
the same order and spelling, plus the system prerequisite the README names. Anything else that
installs in CI would be a step a README reader never takes.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "illume quickstart"
INSTALLERS = re.compile(r"\b(pip|pip3|apt-get|apt|conda|uv|make)\b|install")


def _readme_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def _ci_commands() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").split("# README commands:", 1)[1]
    return [line.strip() for line in lines.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_commands_verbatim() -> None:
    readme = _readme_block()
    assert QUICKSTART in readme and any("pytest" in line for line in readme)
    assert _ci_commands() == [line for line in readme if line != QUICKSTART]


def test_ci_installs_nothing_the_readme_does_not() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    before_readme_commands = ci.split("# README commands:", 1)[0]
    code = [line.split("#", 1)[0] for line in before_readme_commands.splitlines()]
    installs = [line.strip() for line in code if INSTALLERS.search(line)]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    prerequisite = re.search(r"`(apt-get install -y [\w-]+)`", readme).group(1)
    # The only install step before the README's own commands is the README's system prerequisite.
    assert installs and all(prerequisite in line for line in installs), installs


def test_the_set_up_script_is_what_the_readme_calls() -> None:
    setup_line = _readme_block()[0]
    script = REPO / setup_line.split()[-1]
    assert setup_line.startswith("bash ") and script.is_file()
    text = script.read_text(encoding="utf-8")
    assert "--no-build-isolation" in text and "--no-deps" in text and '-e ".[all]"' in text


def _fake_python(tmp_path: Path, has_torch: bool) -> tuple[Path, Path]:
    """A stand-in interpreter that logs every call; `import torch` works only if `has_torch`."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'if [ "$1" = "-c" ] && [[ "$2" == *print* ]]; then echo "torch==2.13.0+cu128"; fi\n'
        f'if [ "$1" = "-c" ] && [ "$2" = "import torch" ]; then exit {0 if has_torch else 1}; fi\n'
    )
    fake.chmod(0o755)
    return fake, log


def _pip_calls(tmp_path: Path, has_torch: bool) -> list[str]:
    import os
    import subprocess

    fake, log = _fake_python(tmp_path, has_torch)
    script = REPO / _readme_block()[0].split()[-1]
    env = {**os.environ, "PYTHON": str(fake)}
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, timeout=60)
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip install")]


def test_an_installed_torch_is_kept_and_pinned(tmp_path: Path) -> None:
    calls = _pip_calls(tmp_path, has_torch=True)
    assert len(calls) == 4 and not any("torch==" in call for call in calls)
    # every step is constrained to the torch that was there (the constraints file holds its version)
    assert all(" -c " in call for call in calls)
    assert any('--no-build-isolation -e .[deepspeed]' in call for call in calls)
    assert any("--no-deps lmms-eval==" in call for call in calls)


def test_without_torch_the_pinned_version_comes_first(tmp_path: Path) -> None:
    calls = _pip_calls(tmp_path, has_torch=False)
    assert calls[0].endswith("torch==2.13.0") and len(calls) == 5


def test_all_holds_every_extra_but_the_documented_exceptions(monkeypatch) -> None:
    """A helper's new extra reaches the README's set-up command unless it is named as left out."""
    import runpy
    from unittest import mock

    monkeypatch.chdir(REPO)  # setup.py reads README.md relative to itself
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(REPO / "setup.py"), run_name="setup")
    extras = setup.call_args.kwargs["extras_require"]
    left_out = {"eval", "deepspeed", "npu", "flash"}
    expected = {dep for name, deps in extras.items() if name not in left_out | {"all"} for dep in deps}
    assert set(extras["all"]) == expected
    assert all(dep in expected for dep in extras["lmms"])  # lmms-eval's CLI modules
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| extras |"))
    assert all(f"`{name}`" in row.split("not in `all`")[1] for name in left_out)
