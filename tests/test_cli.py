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


def test_zoo_build_bad_spec_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('dataset = "digits"\n[architecture]\nfamily = "mlp"\n[hparams]\nlr = [-1.0]\n')
    assert main(["zoo", "build", str(spec), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gensight: error: spec file ")
    assert "hparams.lr: value -1.0 is invalid" in err
    assert not (tmp_path / "z").exists()  # nothing written for a bad spec


def test_zoo_info_on_a_non_zoo(tmp_path, capsys):
    assert main(["zoo", "info", str(tmp_path)]) == 2
    assert "is not a gensight zoo" in capsys.readouterr().err
