"""tfseg.cli: ``tfseg COMMAND [ARGS]`` runs what ``python -m tfseg.X [ARGS]`` runs."""
from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import tfseg
from tfseg import cli


def _run(main, argv, capsys):
    """(exit code, stdout, stderr) of ``main(argv)``; argparse's SystemExit counts as a return."""
    try:
        code = main(argv)
    except SystemExit as done:
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def test_usage_lists_every_command_with_its_description(capsys):
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert listed == cli.usage() + "\n"
    assert listed.startswith("usage: tfseg COMMAND [ARGS...]")
    for name, (_, text) in cli.COMMANDS.items():
        assert any(line.split() and line.split()[0] == name and line.rstrip().endswith(text)
                   for line in listed.splitlines()), name
    # no command: the same listing, as an error exit
    assert cli.main([]) == 2 and capsys.readouterr().out == listed
    assert cli.main(["-h"]) == 0 and capsys.readouterr().out == listed


def test_version(capsys):
    for flag in ("--version", "-V"):
        assert cli.main([flag]) == 0
        assert capsys.readouterr().out == f"tfseg {tfseg.__version__}\n"
    assert tfseg.__version__ == metadata.version("tfseg")


def test_every_command_names_a_module_with_a_main():
    for name, (module, _) in cli.COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
        python_m = module.removesuffix(".__main__")  # `python -m tfseg.bench` runs tfseg/bench/__main__.py
        assert python_m.rpartition(".")[2] == name.replace("-", "_"), name


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_command_help_is_the_modules_own(name, capsys):
    module = importlib.import_module(cli.COMMANDS[name][0])
    expected = _run(module.main, ["--help"], capsys)
    assert expected[0] == 0 and len(expected[1]) > 50
    assert _run(cli.main, [name, "--help"], capsys) == expected


def test_arguments_output_and_exit_code_pass_through(tmp_path, capsys):
    missing = tmp_path / "missing_run"
    code, out, err = _run(cli.main, ["model-card", "show", str(missing)], capsys)
    assert (code, out) == (2, "") and err.startswith(f"error: {missing}: no such file or directory")
    from tfseg import model_card

    assert _run(model_card.main, ["show", str(missing)], capsys) == (code, out, err)
    code, _, err = _run(cli.main, ["model-card", "rename", "x"], capsys)  # argparse of the module itself
    assert code == 2 and "usage: python -m tfseg.model_card" in err and "invalid choice: 'rename'" in err


def test_console_script_and_python_m():
    scripts = {entry.name: entry.value for entry in metadata.entry_points(group="console_scripts")}
    assert scripts["tfseg"] == "tfseg.cli:main"
    done = subprocess.run([sys.executable, "-m", "tfseg.cli", "nonsense"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: unknown command 'nonsense'; expected one of ['bench', 'compare'")
    script = Path(sys.executable).parent / "tfseg"
    if not script.is_file():
        pytest.skip(f"no console script beside {sys.executable}")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, f"tfseg {tfseg.__version__}\n")
