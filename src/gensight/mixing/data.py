"""Offline text domains for data-mixing experiments, with fixed train/val/test splits.

Nothing is downloaded: every domain is built from files on this machine or generated.

| domain | content |
|---|---|
| ``python`` | source files of Python's standard library (top-level ``*.py``, sorted) |
| ``pydoc`` | the ``pydoc_data.topics`` help texts (English reference prose) |
| ``docstrings`` | docstrings of the installed numpy, scipy and pandas sources (``ast``) |
| ``arithmetic`` | generated sums, differences and products, ``"417+85=502"`` (seeded) |
| ``hex`` | seeded random hexadecimal strings (a stand-in for noisy data: nothing to |
| | learn beyond the 16-symbol alphabet, irreducible loss ln 16 = 2.77 nats/byte) |

Each domain is a list of documents, shuffled with a fixed seed, joined with ``"\\n\\n"``, cut
to at most ``max_bytes`` and split by bytes into 80% train, 10% validation, 10% test. The
content of ``python`` and ``docstrings`` depends on the installed versions; each domain's
SHA-256 is recorded by a training run and checked on resume.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gensight.mixing.scaling import MixingError

DOMAINS = ("python", "pydoc", "docstrings", "arithmetic", "hex")
# natural (uncapped-by-default) sizes differ on purpose, so natural != uniform
DEFAULT_MAX_BYTES = {"python": 2_000_000, "pydoc": 470_000, "docstrings": 1_200_000,
                     "arithmetic": 600_000, "hex": 800_000}
SPLITS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class TextDomain:
    """One domain: ``train``, ``val``, ``test`` as 1-D uint8 arrays of bytes."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            h.update(part.tobytes())
        return h.hexdigest()


def _python_docs(limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.append(text)
        total += len(text)
        if total >= 2 * limit:
            break
    return docs


def _pydoc_docs(limit: int) -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _docstring_docs(limit: int) -> list[str]:
    docs, total = [], 0
    for pkg in ("numpy", "scipy", "pandas"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef |
                              ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 80:
                        docs.append(doc)
                        total += len(doc)
            if total >= 2 * limit / 3 * (1 + ("numpy", "scipy", "pandas").index(pkg)):
                break
    return docs


def _arithmetic_docs(limit: int) -> list[str]:
    rng = np.random.default_rng(1234)
    docs, total = [], 0
    while total < limit:
        a, b = rng.integers(0, 1000, size=2)
        op = "+-*"[int(rng.integers(3))]
        c = a + b if op == "+" else a - b if op == "-" else a * b
        line = f"{a}{op}{b}={c}"
        docs.append(line)
        total += len(line) + 1
    return ["\n".join(docs[i:i + 40]) for i in range(0, len(docs), 40)]


def _hex_docs(limit: int) -> list[str]:
    rng = np.random.default_rng(4321)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    n_lines = limit // 33 + 1
    lines = digits[rng.integers(0, 16, size=(n_lines, 32))]
    text = [bytes(row).decode("ascii") for row in lines]
    return ["\n".join(text[i:i + 20]) for i in range(0, len(text), 20)]


_BUILDERS = {"python": _python_docs, "pydoc": _pydoc_docs, "docstrings": _docstring_docs,
             "arithmetic": _arithmetic_docs, "hex": _hex_docs}


def split_bytes(name: str, data: bytes, splits=SPLITS) -> TextDomain:
    """Split ``data`` into train/val/test by bytes (fractions ``splits``)."""
    arr = np.frombuffer(data, dtype=np.uint8).copy()
    n = arr.size
    a, b = int(n * splits[0]), int(n * (splits[0] + splits[1]))
    if a == 0 or b == a or b == n:
        raise MixingError(f"domain {name!r} has no data: {n} bytes cannot be split into "
                          "non-empty train/val/test")
    return TextDomain(name, arr[:a], arr[a:b], arr[b:])


def load_domains(names=DOMAINS, max_bytes: int | dict | None = None,
                 seed: int = 0) -> dict[str, TextDomain]:
    """Build the domains ``names`` (a subset of :data:`DOMAINS`). ``max_bytes`` caps each
    domain (an int for all, or a dict by name; default :data:`DEFAULT_MAX_BYTES`). Documents are
    shuffled with ``seed`` before the cut, so the splits are fixed for a given seed."""
    out = {}
    for name in names:
        if name not in _BUILDERS:
            raise MixingError(f"unknown text domain {name!r}; choose from {', '.join(DOMAINS)}")
        if max_bytes is None:
            cap = DEFAULT_MAX_BYTES[name]
        elif isinstance(max_bytes, dict):
            cap = int(max_bytes.get(name, DEFAULT_MAX_BYTES[name]))
        else:
            cap = int(max_bytes)
        docs = _BUILDERS[name](cap)
        order = np.random.default_rng(seed).permutation(len(docs))
        text = "\n\n".join(docs[i] for i in order).encode("utf-8", errors="replace")[:cap]
        out[name] = split_bytes(name, text)
    return out
