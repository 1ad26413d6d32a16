"""The README's Python examples run as written (in a temporary working directory)."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.filterwarnings("ignore::gensight.estimate.AgreementWarning")
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    tour: dict = {}
    for block in blocks:                       # one namespace: later blocks use earlier ones
        exec(compile(block, str(README), "exec"), namespace)
        if "ALineD()" in block:                # the end of the tour
            tour = dict(namespace)
    # the tour's results are what it says they are
    namespace = tour
    scores = namespace["scores"]
    assert list(scores["method"]) == ["my-nfn", "statnn"]
    assert np.isfinite(scores["tau"]).all()
    atc, aline, true = (np.asarray(namespace[k]) for k in ("atc", "aline", "true"))
    assert atc.shape == aline.shape == true.shape == (len(namespace["final"]),)
    assert ((0 <= aline) & (aline <= 1)).all()
