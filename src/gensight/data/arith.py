"""``arith``: two-number addition completed character by character (the UNF paper's Tiny RNN
Zoo task, arXiv 2402.05232, Sec. 5.1, at a CPU's scale).

Every question ``"a+b="`` with ``a`` in 0..99 and ``b`` in 0..9 (1,000 of them) and its answer
``"c."`` (``c = a + b`` written without leading zeros, ``"."`` the end mark), e.g.
``"57+8=65."``. (The paper's zoo adds numbers of up to five digits with width-128
encoder-decoder GRUs; a width-32 GRU on a CPU learns this smaller table in tens of epochs, with
test success rates that spread over [0, 0.6] across learning rates and batch sizes.)
Vocabulary :data:`VOCAB` (10 digits, ``+``, ``=``, ``.``); a sequence is padded with ``.``
to :data:`LENGTH` + 1 characters. ``x`` holds the token ids of characters ``0..LENGTH-1``
``(N, LENGTH)``, ``y`` the next character at every position, with
:data:`~gensight.zoo.families.IGNORE` (-100) where the next character is not part of the
answer (the question, and the padding after the end mark): a model is scored on the answer
and end mark only. The questions are split 60/20/20 into train/val/test by a fixed
permutation, so validation and test questions are sums a member never saw.
"""

from __future__ import annotations

import functools

import torch

VOCAB = "0123456789+=."
MAX_A, MAX_B = 99, 9
LENGTH = 8  # "99+9=108." has 9 characters: 8 inputs, 8 next-character targets
SPLIT_SEED = 20240207
IGNORE = -100


def encode(text: str) -> list[int]:
    return [VOCAB.index(c) for c in text]


def question(a: int, b: int) -> tuple[list[int], list[int]]:
    """Token ids ``x`` and targets ``y`` (``IGNORE`` off the answer) of ``a + b``."""
    s = f"{a}+{b}={a + b}."
    ids = encode(s) + [VOCAB.index(".")] * (LENGTH + 1 - len(s))
    eq = s.index("=")
    y = [ids[p + 1] if eq <= p < len(s) - 1 else IGNORE for p in range(LENGTH)]
    return ids[:LENGTH], y


@functools.cache
def load_arith():
    """The ``arith`` :class:`~gensight.data.Dataset`: token ids ``(N, 8)`` and targets
    ``(N, 8)`` of 600 / 200 / 200 questions; ``n_classes`` is the vocabulary size (13)."""
    from gensight.data.datasets import Dataset

    xs, ys = [], []
    for a in range(MAX_A + 1):
        for b in range(MAX_B + 1):
            x, y = question(a, b)
            xs.append(x)
            ys.append(y)
    x, y = torch.tensor(xs), torch.tensor(ys)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train, n_val = int(0.6 * len(x)), int(0.2 * len(x))
    parts = order[:n_train].sort().values, order[n_train:n_train + n_val].sort().values, \
        order[n_train + n_val:].sort().values
    (xtr, ytr), (xva, yva), (xte, yte) = ((x[p], y[p]) for p in parts)
    return Dataset("arith", xtr, ytr, xva, yva, xte, yte, len(VOCAB), None)


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)
