import re
import subprocess
import sys

from gensight.cli import main


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: gensight" in out and "example" in out


def test_example_reports_symmetry_gaps_at_rounding_level(capsys):
    assert main(["example", "--members", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("│ small CNN", "│ MLP"))]
    assert len(rows) == 2
    for row in rows:
        gaps = [float(v) for v in re.findall(r"\d\.\d\de[+-]\d\d", row)]
        assert len(gaps) == 2 and max(gaps) < 1e-4


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "gensight.cli", "--version"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip().startswith("gensight ")
