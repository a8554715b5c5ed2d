"""The README's set-up commands and Python snippets work as shown."""

import re
import shlex
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# The high-MOI configuration users copy from the README (issue 6), verbatim.
RECOMMENDED = """\
resampling_method="stratified_perm",
resampling_kwargs=dict(
    n_bins=20,
    stratify_by_batch=True,
    batch_key="batch",
    burden_key="log1p_non_ntc_guides_per_cell",
    n_burden_bins=8,
    burden_bin_method="quantile",
)"""


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = [line for block in _blocks("bash") for line in block.strip().splitlines()]
    assert commands == [
        "pip install -e . && sklcrt demo --out sklcrt_demo",
        'pip install -e ".[test]" && pytest',
    ]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && pytest' in ci


def test_readme_shows_the_recommended_snippet():
    python = "\n".join(_blocks("python"))
    assert RECOMMENDED in textwrap.dedent(
        "\n".join(line[4:] if line.startswith("    ") else line for line in python.splitlines())
    )


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_snippet_runs(index, capsys):
    code = _blocks("python")[index]
    exec(compile(code, f"README.md[python {index}]", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out  # every snippet prints its results


@pytest.mark.slow
def test_readme_demo_command(tmp_path):
    from sklcrt.cli import main

    command = _blocks("bash")[0].strip().split("&&")[1]
    argv = shlex.split(command)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "demo")
    assert main([*argv, "--quiet"]) == 0
    assert (tmp_path / "demo" / "summary.json").exists()
