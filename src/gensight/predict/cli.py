"""``gensight predict``: fit and score predictors of generalization on a zoo; registered by
:func:`register`."""

from __future__ import annotations

import argparse

from gensight.cliutil import add_fit_options, escape, open_classifier_zoo, print_frame


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd
    from rich.console import Console

    from gensight.predict import evaluate_predictors, make_predictor, make_predictors, split_zoo
    from gensight.report.figures import predicted_vs_actual

    console = Console()
    zoo = open_classifier_zoo(args.zoo, "predict")
    from gensight.weightspace import ParamSpace

    default = ("statnn,unf,unf-np,deepsets" if isinstance(zoo.space, ParamSpace)
               else "statnn,nfn-hnp,nfn-np,measure:log.prod.of.spec")
    methods = [m.strip() for m in (args.methods or default).split(",") if m.strip()]
    # unknown names and splits a method cannot fit on fail before any work
    probes = [make_predictor(m, seed=args.seed, epochs=args.epochs) for m in methods]
    train, test = split_zoo(zoo, by=args.split, test_fraction=args.test_fraction,
                            seed=args.seed, target=args.target)
    for probe in probes:
        probe.check_split(train)
    predictors = make_predictors(methods, zoo, pd.concat([train.rows, test.rows]),
                                 seed=args.seed, epochs=args.epochs, n_examples=args.examples)
    console.print(f"zoo {zoo.manifest['name']}: {len(train)} training and {len(test)} test "
                  f"networks; predicting {args.target}", markup=False)
    with console.status("") as status:
        scores, predictions, notes = evaluate_predictors(
            train, test, predictors, progress=lambda name: status.update(f"fitting {escape(name)}"))
    out = Path(args.out) if args.out else Path(args.zoo) / "predict"
    out.mkdir(parents=True, exist_ok=True)
    print_frame(console, scores, f"predicting {args.target} on {len(test)} held-out networks")
    for note in dict.fromkeys(n.split(": ", 1)[1] for n in notes):
        console.print(f"note: {note}", markup=False)
    scores.to_csv(out / "scores.csv", index=False)
    scores.to_parquet(out / "scores.parquet", index=False)
    preds = test.rows[["member_id", "config_id", "seed_index", args.target]].copy()
    for name, values in predictions.items():
        preds[name] = values
        safe = name.replace(":", "-")
        predicted_vs_actual(test.y, values, out / f"predicted-{safe}.png", title=name,
                            xlabel=f"actual {args.target}")
    preds.to_csv(out / "predictions.csv", index=False)
    console.print(f"scores, predictions and figures: {out}", markup=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gensight predict`` to the main parser's subcommands."""
    pre = sub.add_parser(
        "predict", help="fit and score predictors of generalization on a zoo",
        description="Train each method on a seeded split of ZOO and score its predictions on "
        "the held-out networks: Kendall's tau, granulated tau, CMI (PGDL), R^2, MAE, time.")
    pre.add_argument("zoo", help="zoo directory")
    pre.add_argument("--methods", default=None,
                     help="comma-separated: statnn, statnn-mlp, statnn-paper, nfn-hnp, "
                     "nfn-np, nfn-hnp-paper, nfn-np-paper (the NFN paper's own recipe), nft, "
                     "nft-np, unf, unf-np, deepsets, margin-signature, measure:NAME "
                     "(default: statnn,nfn-hnp,nfn-np,measure:log.prod.of.spec; on a GRU or "
                     "residual-CNN zoo: statnn,unf,unf-np,deepsets)")
    add_fit_options(pre)
    pre.add_argument("--test-fraction", type=float, default=0.25)
    pre.add_argument("--out", help="output directory (default: ZOO/predict)")
    pre.set_defaults(func=_cmd_predict)
