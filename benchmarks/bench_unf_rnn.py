"""Tiny RNN Zoo: predict GRUs' arithmetic success rate from their weights (issue #16).

UNF (Zhou, Finn, Harrison, arXiv 2402.05232, Sec. 5.1, NeurIPS Table 1) predicts the test
success rate of 10^4 arithmetic GRUs from their weights: Kendall's tau 0.8968 (UNF) against
0.8839 (StatNN) and 0.8306 (Deep Set). This runs the same comparison on a gensight zoo of
``family = "gru"`` (``benchmarks/specs/arith-gru.toml``: 1,600 width-32 GRUs on ``a+b=``,
only the learning rate and batch size varying, as in the paper), built by the zoo builder
into the store::

    gensight zoo build benchmarks/specs/arith-gru.toml --out runs/arith-gru
    python benchmarks/bench_unf_rnn.py runs/arith-gru [--methods unf,unf-np,deepsets,statnn]
        [--seeds 0,1,2] [--epochs 60]

The split holds out the last seed of every configuration (``split_zoo(by="seed")``). Each
method is fitted with every predictor seed; the table gives Kendall's tau on the held-out
networks (mean and spread over seeds), R^2 and the fit time. Two baselines put the numbers in
context: a gradient-boosted regressor on the hyperparameters themselves (what the
configuration alone tells), and the rank agreement of the held-out networks with the other
seeds of their configuration (how much of the target is seed noise). The last lines check
the UNF predictor's invariance and the spec: a random hidden-neuron permutation of the test
networks changes neither the UNF's predictions nor the networks' own success rates.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from gensight.data import load_dataset
from gensight.data.arith import IGNORE
from gensight.metrics import kendall_tau
from gensight.nf import unf
from gensight.predict import split_zoo
from gensight.predict.predictors import make_predictor
from gensight.weightspace import ParamBatch
from gensight.zoo import Zoo

PAPER = {"unf": 0.8968, "statnn": 0.8839, "deepsets": 0.8306}


def r2(pred: np.ndarray, y: np.ndarray) -> float:
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo")
    ap.add_argument("--methods", default="unf,unf-np,deepsets,statnn")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    zoo = Zoo.open(args.zoo)
    train, test = split_zoo(zoo, by="seed")
    y = test.y
    print(f"{zoo.manifest['name']}: {len(train)} training / {len(test)} test networks; target "
          f"test success rate: median {np.median(y):.3f}, quartiles "
          f"{np.quantile(y, 0.25):.3f}-{np.quantile(y, 0.75):.3f}, max {y.max():.3f}")

    from sklearn.ensemble import HistGradientBoostingRegressor

    hp = [h for h in ("lr", "batch_size") if h in train.rows]
    gbt = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0)
    gbt.fit(train.rows[hp].to_numpy(float), train.y)
    print(f"hyperparameters alone ({', '.join(hp)} -> gradient boosting): tau "
          f"{kendall_tau(gbt.predict(test.rows[hp].to_numpy(float)), y):.3f}")
    mean_other = train.rows.groupby("config_id")[train.target].mean()
    print(f"mean of the other seeds of the same configuration: tau "
          f"{kendall_tau(test.rows['config_id'].map(mean_other).to_numpy(), y):.3f} "
          "(the seed noise ceiling of a predictor that reads the configuration)")

    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"\n| method | tau (mean ± std over {len(seeds)} seeds) | R^2 | fit s | paper tau |")
    print("|---|---|---|---|---|")
    fitted = {}
    for method in args.methods.split(","):
        taus, r2s, secs = [], [], []
        for seed in seeds:
            start = time.perf_counter()
            p = make_predictor(method, seed=seed, epochs=args.epochs).fit(train)
            pred = p.predict(test)
            secs.append(time.perf_counter() - start)
            taus.append(kendall_tau(pred, y))
            r2s.append(r2(pred, y))
            fitted.setdefault(method, p)
        paper = PAPER.get(method)
        print(f"| {method} | {np.mean(taus):.3f} ± {np.std(taus):.3f} | {np.mean(r2s):.3f} | "
              f"{np.mean(secs):.0f} | {'' if paper is None else f'{paper:.4f}'} |", flush=True)

    if "unf" in fitted:
        model = fitted["unf"]
        batch = model._scaled(test.weights)
        space = batch.space
        gen = torch.Generator().manual_seed(0)
        perms = unf.random_permutation(space.spec, space.shape_dict, gen, len(batch))
        moved = ParamBatch(space, unf.permute(batch.params, space.spec, perms))
        with torch.no_grad():
            a, b = model.model_(batch), model.model_(moved)
        raw = test.weights
        raw_moved = ParamBatch(space, unf.permute(raw.params, space.spec, perms))
        data = load_dataset("arith")
        x = F.one_hot(data.x_test, data.n_classes).float()
        worst = 0.0
        for i, (sd_a, sd_b) in enumerate(zip(raw.state_dicts()[:50],
                                             raw_moved.state_dicts()[:50], strict=True)):
            rates = []
            for sd in (sd_a, sd_b):
                module = zoo.modules(test.rows.iloc[i:i + 1])[0]
                module.load_state_dict(sd)
                with torch.no_grad():
                    ok = ((module(x).argmax(-1) == data.y_test) | (data.y_test == IGNORE)).all(1)
                rates.append(ok.float().mean().item())
            worst = max(worst, abs(rates[0] - rates[1]))
        print(f"\nUNF invariance: max |f(P w) - f(w)| = {(a - b).abs().max().item():.2e} over "
              f"{len(batch)} test networks; spec check: a permuted GRU's success rate changes "
              f"by at most {worst:.2e} (50 networks)")


if __name__ == "__main__":
    main()
