"""The report: files and tables it writes, atomic replacement, CLI; the demo; the page in a
headless browser."""

import base64
import os
import re
import shutil

import pandas as pd
import pytest

from gensight.cli import main
from gensight.report import ReportError, build_report, default_shifts

METHODS = ["statnn", "measure:log.prod.of.spec", "measure:fro.dist"]


@pytest.fixture(scope="module")
def report(grid_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    return build_report(grid_zoo, out, methods=METHODS, n_examples=200)


def test_default_shifts_take_the_middle_severity_of_each_kind(grid_zoo):
    # the fixture zoo stores gaussian_noise at severities 2 and 4
    assert default_shifts(grid_zoo) == ["gaussian_noise-2"]


def test_report_writes_page_tables_and_figures(report, grid_zoo):
    out = report.out
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "scores.csv", "predictions.csv", "estimate_mae.csv",
            "estimates-gaussian_noise-2.csv", "zoo_summary.csv", "figures"} <= names
    # the CSVs hold the returned tables
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["method"]) == METHODS
    pd.testing.assert_frame_equal(scores, report.scores, check_dtype=False)
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 8 and set(METHODS) <= set(preds.columns)   # one held-out seed
    mae = pd.read_csv(out / "estimate_mae.csv", index_col="method")
    assert list(mae.columns) == ["gaussian_noise-2"] and "ALine-D" in mae.index
    # each estimator's MAE is the mean |estimate - true| of its per-network table
    table = report.estimates["gaussian_noise-2"]
    common = table.dropna()
    assert mae.loc["AC", "gaussian_noise-2"] == pytest.approx(
        (common["AC"] - common["true_acc"]).abs().mean())
    # the page embeds every figure file, byte for byte, and needs nothing else
    page = (out / "index.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(embedded) == len(pngs) == 4   # zoo, predictions, estimates, agreement line
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in pngs}
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert grid_zoo.manifest["name"] in page
    # ... and says how to rebuild it, with the options that differ from the defaults
    assert f"gensight report {grid_zoo.root} --methods {','.join(METHODS)} --examples 200" \
        in page


def test_report_replaces_atomically_and_cleans_up_on_error(report, grid_zoo, monkeypatch,
                                                         tmp_path):
    out = tmp_path / "rep"
    shutil.copytree(report.out, out)
    before = (out / "index.html").read_bytes()
    import gensight.report.figures as figures

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(figures, "predictions_grid", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(grid_zoo, out, methods=["measure:log.prod.of.spec"], n_examples=100)
    assert (out / "index.html").read_bytes() == before       # the old report is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]   # no temporary left


def test_report_errors_name_the_problem(grid_zoo, tmp_path):
    with pytest.raises(ReportError, match="no stored logits.*rotation-3"):
        build_report(grid_zoo, tmp_path / "r", shifts=["rotation-3"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not a gensight report directory"):
        build_report(grid_zoo, tmp_path / "mine", methods=["measure:log.prod.of.spec"],
                     shifts=[], n_examples=100)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(Exception, match="unknown method 'nfn-xyz'"):
        build_report(grid_zoo, tmp_path / "r", methods=["nfn-xyz"])
    assert not (tmp_path / "r").exists()


def test_shift_names_are_validated_against_the_zoo_and_files_named_safely(grid_zoo, tmp_path,
                                                                         capsys):
    from gensight.report.run import check_shifts, safe_file_stem, unique_file_stems

    for bad in ("../x-1", "a/b-2", "gaussian_noise-2/../../x", "C:\\evil-1"):
        with pytest.raises(ReportError, match=r"no stored logits for shifted set\(s\) .*; it "
                                              r"has: gaussian_noise-2, gaussian_noise-4 "):
            build_report(grid_zoo, tmp_path / "r", shifts=[bad])
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []
    assert check_shifts(grid_zoo, ["gaussian_noise:4", " gaussian_noise-4", "gaussian_noise-2"]
                        ) == ["gaussian_noise-4", "gaussian_noise-2"]
    assert check_shifts(grid_zoo, "gaussian_noise-2") == ["gaussian_noise-2"]
    with pytest.raises(ReportError, match="must be strings"):
        check_shifts(grid_zoo, [3])
    rc = main(["report", str(grid_zoo.root), "--out", str(tmp_path / "x"), "--shifts", "../x-1",
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "'../x-1'" in err and "gaussian_noise-2" in err and err.count("\n") == 1
    # file names built from names stay in their directory, one per name
    for name in ("../x-1", "a/b-2", "..", "", "a\\b", "x:y", "<img>"):
        stem = safe_file_stem(name)
        assert stem and "/" not in stem and "\\" not in stem and not stem.startswith(".")
        assert (tmp_path / f"estimates-{stem}.csv").parent == tmp_path
    assert unique_file_stems(["a/b-2", "a:b-2", "A_b-2", "ok-1"]) == {
        "a/b-2": "a_b-2", "a:b-2": "a_b-2-2", "A_b-2": "A_b-2-3", "ok-1": "ok-1"}


def test_report_writes_shift_files_under_safe_names(grid_zoo, tmp_path):
    class OddNames:   # the grid zoo, with its shifted set renamed to one with a path in it
        def __getattr__(self, name):
            return getattr(grid_zoo, name)

        shifted_sets = ["../gaussian/noise-2"]

        def logits(self, rows, name):
            return grid_zoo.logits(rows, "gaussian_noise-2" if name == self.shifted_sets[0]
                                   else name)

    out = tmp_path / "deep" / "rep"
    report = build_report(OddNames(), out, methods=["measure:log.sum.of.fro"],
                          shifts=["../gaussian/noise-2"], n_examples=50)
    assert (out / "estimates-_.._gaussian_noise-2.csv").exists()
    assert (out / "figures" / "estimates-_.._gaussian_noise-2.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["rep"]
    assert "estimates-_.._gaussian_noise-2.csv" in report.html.read_text()


def test_report_refuses_a_bad_target_before_any_work(grid_zoo, tmp_path):
    from gensight.predict import PredictError

    with pytest.raises(PredictError, match="'optimizer' is not numeric.*numeric columns"):
        build_report(grid_zoo, tmp_path / "r", target="optimizer", shifts=[])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="exists and is not a directory"):
        build_report(grid_zoo, tmp_path / "file", shifts=[],
                     methods=["measure:log.sum.of.fro"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_report(grid_zoo, tmp_path, capsys):
    out = tmp_path / "cli-report"
    rc = main(["report", str(grid_zoo.root), "--out", str(out), "--methods",
               "measure:log.sum.of.fro", "--shifts", "gaussian_noise:4", "--quiet",
               "--examples", "100"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "measure:log.sum.of.fro" in text and "gaussian_noise-4" in text
    assert "index.html" in text
    assert (out / "estimates-gaussian_noise-4.csv").exists()
    rc = main(["report", str(grid_zoo.root), "--out", str(tmp_path / "x"), "--shifts",
               "fog-1", "--quiet"])
    assert rc == 2 and "fog-1" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the demo

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from gensight.demo import run_demo

    directory = tmp_path_factory.mktemp("demo")
    return directory, run_demo(directory, quick=True, epochs=3)


def test_quick_demo_runs_end_to_end_and_reuses_its_zoo(demo, capsys):
    directory, report = demo
    assert report.html == directory / "report-quick" / "index.html"
    assert set(report.estimate_mae.columns) == {"gaussian_noise-2", "rotation-2"}
    assert {"statnn", "nfn-hnp", "nfn-np"} <= set(report.scores["method"])
    assert report.scores["tau"].notna().all()
    shards = sorted((directory / "zoo-quick" / "shards").glob("*"))
    stamps = [os.stat(p).st_mtime_ns for p in shards]
    # a second run (through the CLI) trains nothing: the cached zoo is reused as it is
    rc = main(["demo", "--dir", str(directory), "--quick", "--epochs", "2", "--quiet"])
    assert rc == 0
    assert [os.stat(p).st_mtime_ns for p in shards] == stamps
    text = capsys.readouterr().out
    assert "best ranking" in text and "report-quick" in text


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run)")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


# for every <img>: loaded, its natural size, and whether its pixels are not all one colour
_CHECK_IMAGES = """
return Array.from(document.images).map(img => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  let varied = false;
  if (img.complete && img.naturalWidth > 0) {
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    for (let i = 4; i < d.length && !varied; i += 4)
      varied = d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2];
  }
  return [img.complete, img.naturalWidth, img.naturalHeight, varied, img.alt];
});
"""


def test_report_page_renders_in_headless_chromium(demo):
    _, report = demo
    browser = _browser()
    try:
        browser.get(report.html.resolve().as_uri())
        images = browser.execute_script(_CHECK_IMAGES)
        logs = browser.get_log("browser")
        title = browser.title
    finally:
        browser.quit()
    figures = list((report.out / "figures").glob("*.png"))
    assert len(images) == len(figures) >= 5   # zoo, predictions, 2 x estimates, >= 1 line
    for complete, width, height, varied, alt in images:
        assert complete and width > 100 and height > 100, alt
        assert varied, f"figure {alt!r} is blank"
    assert not [e for e in logs if e["level"] in ("SEVERE", "WARNING")], logs
    assert title.startswith("gensight report")
