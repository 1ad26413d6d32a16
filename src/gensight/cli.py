"""The ``gensight`` command.

Subcommands:
  example     build a tiny set of networks, check their symmetries and run HNP/NP neural
              functionals on them (a one-minute tour of gensight.weightspace and gensight.nf)
  zoo build   train the members of a zoo spec into a resumable zoo directory
  zoo info    summarize a zoo directory (and verify its shards)
  zoo verify  check every shard, the index and the manifest; --repair
  inr classify  classify the SIRENs of a SIREN zoo by their weights (NFN, StatNN, MLPs)
  inr edit    learn weight-space edits of SIRENs (dilation, contrast)
  merge       align and merge networks (weight/activation matching, FLEET-MERGE rounds)
  mix         train byte-level LMs under a data-mixture policy (ADO, ODM, ...) and report
  tickets     IMP zoos and winning-ticket masks predicted from the initialization
  lopt        meta-train learned optimizers (per-parameter, Deep Sets, NFN, UNF) and compare
  estimate    label-free accuracy estimates on a shifted set (zoo logits or logits files)
  measures    complexity measures of every member of a zoo, as a table
  predict     fit and score predictors of generalization on a seeded split of a zoo
  report      one HTML page + CSV tables for a zoo: predictors, measures, label-free estimates
  demo        build a small zoo and write its report: the whole program in a few minutes
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gensight import __version__
from gensight.errors import GensightError
from gensight.progress import progress_bar


def _cmd_example(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch import nn

    from gensight.nf import HNPLinear, InvariantNFN, NPLinear
    from gensight.weightspace import WeightBatch, WeightSpace, permute, random_permutation

    console = Console()
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    def small_cnn() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
        )

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                             nn.Linear(32, 10))

    table = Table(title="gensight example: symmetries of weight spaces and NF-Layers")
    table.caption = (
        "function gap: max |f(x) - f'(x)| between each net and its hidden-neuron permuted copy; "
        "NFN gap: max |NFN(W) - NFN(perm W)| for an HNP InvariantNFN; layer params: an "
        "8->8 channel NF-Layer"
    )
    for col in ("network", "neurons", "params", "function gap", "HNP layer params",
                "NP layer params", "NFN gap"):
        table.add_column(col, justify="right" if col != "network" else "left")
    for name, make, x in (
        ("small CNN", small_cnn, torch.randn(16, 1, 12, 12, generator=gen)),
        ("MLP", mlp, torch.randn(16, 64, generator=gen)),
    ):
        nets = [make() for _ in range(args.members)]
        space = WeightSpace.from_module(nets[0])
        batch = WeightBatch.from_modules(nets, space)
        perm = random_permutation(space, "hnp", batch_size=len(batch), generator=gen)
        permuted_nets = permute(batch, perm).to_modules(nets[0])
        with torch.no_grad():
            func_gap = max(
                (a(x) - b(x)).abs().max().item()
                for a, b in zip(nets, permuted_nets, strict=True)
            )
            model = InvariantNFN(space, channels=(8, 8), symmetry="hnp")
            nfn_gap = (model(batch) - model(permute(batch, perm))).abs().max().item()
        table.add_row(
            name, "-".join(map(str, space.neurons)), f"{space.num_params:,}", f"{func_gap:.2e}",
            f"{HNPLinear.num_parameters(space, 8, 8):,}",
            f"{NPLinear.num_parameters(space, 8, 8):,}", f"{nfn_gap:.2e}",
        )
    console.print(table)
    console.print(
        "Permuting hidden neurons leaves each network's function unchanged, and the "
        "HNP neural functional's output is invariant to it (gaps at float rounding level)."
    )
    return 0


def escape(text: str) -> str:
    """``text`` with rich markup escaped (zoo names, paths and methods are user strings)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _open_zoo(path: str, command: str):
    """Open a classifier zoo for ``gensight COMMAND`` and say on stderr what opening it
    worked around (a rebuilt index, damaged shards left out)."""
    from gensight.errors import GensightError
    from gensight.zoo import Zoo

    zoo = Zoo.open(path)
    if zoo.family == "siren":
        raise GensightError(f"{path} is a SIREN zoo (one INR per image, no accuracies); "
                            f"'gensight {command}' needs a classifier zoo (family mlp or cnn)")
    for note in zoo.notes:
        print(f"gensight: note: {note}", file=sys.stderr)
    return zoo


def _print_frame(console, frame, title: str, digits: int = 3, max_rows: int | None = None):
    import pandas as pd
    from rich.table import Table

    table = Table(title=escape(title))
    for col in frame.columns:
        table.add_column(escape(str(col)), justify="right" if pd.api.types.is_numeric_dtype(
            frame[col]) else "left")
    shown = frame if max_rows is None else frame.head(max_rows)
    for _, row in shown.iterrows():
        table.add_row(*(f"{v:.{digits}f}" if isinstance(v, float) else escape(str(v))
                        for v in row))
    if max_rows is not None and len(frame) > max_rows:
        table.caption = f"first {max_rows} of {len(frame)} rows (all rows are in the CSV)"
    console.print(table)


def _shift_names(zoo, shift: str) -> list[str]:
    from gensight.estimate import EstimatorError

    name, _, severity = shift.partition(":")
    available = sorted(zoo.shifted_sets)
    wanted = [f"{name}-{severity}"] if severity else \
        [a for a in available if a.rsplit("-", 1)[0] == name]
    if not wanted or any(w not in available for w in wanted):
        raise EstimatorError(f"the zoo has no shifted set {shift!r}; it has "
                             f"{', '.join(available) or 'none'} (use NAME or NAME:SEVERITY)")
    return wanted


def _cmd_estimate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from gensight.estimate import (
        METHODS,
        EstimatorError,
        estimate_accuracies,
        load_labels,
        load_logits,
        zoo_estimates,
    )
    from gensight.estimate.run import check_methods
    from gensight.report.figures import aline_figure

    console = Console()

    def show(frame, title: str, digits: int, max_rows: int | None = None) -> None:
        """Print ``frame`` without cutting a header or a cell: the columns after the leading
        model/true ones are split over as many tables as the console width needs."""
        shown = frame if max_rows is None else frame.head(max_rows)
        cells = {c: [f"{v:.{digits}f}" if isinstance(v, float) else str(v)
                     for v in shown[c]] for c in frame.columns}
        width = {c: max([len(str(c)), *map(len, cells[c])]) + 3 for c in frame.columns}
        lead = [c for c in ("model", "method", "true") if c in frame.columns]
        rest = [c for c in frame.columns if c not in lead]
        room = max(console.width - 1 - sum(width[c] for c in lead), 1)
        chunks: list[list] = [[]]
        for c in rest:
            if chunks[-1] and sum(width[k] for k in chunks[-1]) + width[c] > room:
                chunks.append([])
            chunks[-1].append(c)
        for part, chunk in enumerate(chunks, 1):
            suffix = f" ({part}/{len(chunks)})" if len(chunks) > 1 else ""
            table = Table(title=escape(title + suffix))
            for c in lead + chunk:
                numeric = pd.api.types.is_numeric_dtype(frame[c])
                table.add_column(escape(str(c)), justify="right" if numeric else "left",
                                 no_wrap=True, min_width=len(str(c)))
            for i in range(len(shown)):
                table.add_row(*(escape(cells[c][i]) for c in lead + chunk))
            if max_rows is not None and len(frame) > max_rows:
                table.caption = f"first {max_rows} of {len(frame)} rows (all rows are in the CSV)"
            console.print(table)

    methods = check_methods(args.methods.split(",")) if args.methods else None
    kwargs = {"methods": methods} if methods else {}
    runs = []
    if args.zoo is not None:
        if args.source_logits or args.target_logits:
            raise EstimatorError("give either a ZOO or --source-logits/--target-logits, not both")
        if args.partners:
            raise EstimatorError("--partners is for logits files: a zoo's partners are the "
                                 "seeds of each configuration")
        if not args.shift:
            raise EstimatorError("--shift NAME[:SEVERITY] is required with a ZOO")
        zoo = _open_zoo(args.zoo, "estimate")
        out = Path(args.out) if args.out else Path(args.zoo) / "estimates"
        for name in _shift_names(zoo, args.shift):
            runs.append((name, zoo_estimates(zoo, name, **kwargs)))
    else:
        missing = [f for f in ("source_logits", "source_labels", "target_logits")
                   if getattr(args, f) is None]
        if missing:
            raise EstimatorError("give a ZOO, or all of --source-logits, --source-labels and "
                                 "--target-logits (missing: "
                                 + ", ".join("--" + m.replace("_", "-") for m in missing) + ")")
        names, src = load_logits(args.source_logits)
        tnames, tgt = load_logits(args.target_logits)
        if names != tnames:
            raise EstimatorError(f"source and target logits name different models: {names} vs "
                                 f"{tnames}")
        labels = load_labels(args.source_labels)
        target_labels = load_labels(args.target_labels) if args.target_labels else None
        partners = None
        if args.partners:
            spec = args.partners
            if spec.endswith(".json"):
                try:
                    groups = json.loads(Path(spec).read_text())
                except (OSError, ValueError) as exc:
                    raise EstimatorError(f"cannot read partners from {spec!r}: "
                                         f"{' '.join(str(exc).split())}") from None
            else:
                groups = [[n.strip() for n in g.split(",") if n.strip()]
                          for g in spec.split(";") if g.strip()]
            if not isinstance(groups, list) or not all(
                    isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups):
                raise EstimatorError("--partners: expected groups of model names, e.g. "
                                     "'model-0,model-1;model-2,model-3' or a .json list of "
                                     "lists of names")
            where: dict[str, int] = {}
            for k, group in enumerate(groups):
                for n in group:
                    if n not in names:
                        raise EstimatorError(f"--partners names {n!r}, which is not a model of "
                                             f"the logits files; they hold {names[:5]}"
                                             f"{' ...' if len(names) > 5 else ''}")
                    if n in where:
                        raise EstimatorError(f"--partners lists {n!r} in two groups")
                    where[n] = k
            partners = [[names.index(m) for m in groups[where[n]] if m != n]
                        if n in where else None for n in names]
        if methods is None:
            methods = [m for m in METHODS if m != "GDE" or partners is not None]
            if len(names) < 3:
                methods = [m for m in methods if not m.startswith("ALine")]
        elif "GDE" in methods and partners is None:
            raise EstimatorError("GDE needs independent runs of each model's configuration: "
                                 "name them with --partners")
        out = Path(args.out) if args.out else Path("gensight-estimate")
        runs.append(("target", estimate_accuracies(
            None, labels, None, source_logits=src, target_logits=tgt,
            target_labels=target_labels, model_ids=names, partners=partners,
            methods=methods)))
    out.mkdir(parents=True, exist_ok=True)
    for name, res in runs:
        cols = ["model", *(["true_acc"] if "true_acc" in res.table else []),
                *[c for c in res.table.columns if c not in ("model", "source_acc", "true_acc")]]
        show(res.table[cols].rename(columns={"true_acc": "true"}),
             f"estimated accuracy on {name}", digits=2, max_rows=args.rows)
        if len(res.mae):
            show(res.mae.rename("MAE").reset_index().rename(columns={"index": "method"}),
                 f"mean absolute error on {name}", digits=3)
        for note in res.notes:
            console.print(f"note: {note}", markup=False)
        res.table.to_csv(out / f"estimates-{name}.csv", index=False)
        if len(res.mae):
            res.mae.rename("mae").to_csv(out / f"mae-{name}.csv", index_label="method")
        if res.line is not None:
            fig = aline_figure(res.table, res.pairs, res.line, out / f"aline-{name}.png",
                               title=f"agreement on the line: {name}")
            console.print(f"figure: {fig}", markup=False)
    console.print(f"tables: {out}/estimates-*.csv", markup=False)
    return 0


def _cmd_measures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from gensight.measures import MEASURES, available_measures, get_measure, zoo_measures

    console = Console(stderr=True)
    if args.list:
        for m in MEASURES.values():
            needs = ", ".join(k for k, v in (("data", m.needs_data), ("init", m.needs_init))
                              if v) or "weights only"
            print(f"{m.name:32s} [{m.cost}; {needs}] {m.cites}")
        return 0
    if args.zoo is None:
        raise GensightError("give a ZOO directory (or --list)")
    zoo = _open_zoo(args.zoo, "measures")
    names = available_measures(cheap_only=True) if args.measures in (None, "cheap") else \
        list(MEASURES) if args.measures == "all" else args.measures.split(",")
    for name in names:  # unknown names fail before the progress bar
        get_measure(name)
    rows = zoo.table.query("is_final and finite")
    if args.limit:
        rows = rows.head(args.limit)
    with progress_bar(console, args.quiet) as bar:
        searches = None
        if any(n.startswith("sharpness.") for n in names):  # the batched alpha' searches
            searches = bar.add_task("alpha' searches", total=None)
        task = bar.add_task("measures", total=len(rows))
        table, notes = zoo_measures(
            zoo, names, rows, n_examples=args.examples,
            progress=lambda done, total: bar.update(task, completed=done),
            alpha_progress=None if searches is None else (
                lambda done, total: bar.update(searches, completed=done, total=total)))
    out = Path(args.out) if args.out else Path(args.zoo) / "measures.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    from gensight.zoo.store import atomic_write_bytes, parquet_bytes

    atomic_write_bytes(out, table.to_csv(index=False).encode() if out.suffix == ".csv"
                       else parquet_bytes(table))
    for name, why in notes.items():
        console.print(f"{name} does not apply: {why}", markup=False)
    summary = table[names].describe().T[["count", "mean", "min", "max"]]
    _print_frame(Console(), summary.reset_index().rename(columns={"index": "measure"}),
                 f"measures of {len(rows)} networks")
    console.print(f"table: {out}", markup=False)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd
    from rich.console import Console

    from gensight.predict import evaluate_predictors, make_predictor, make_predictors, split_zoo
    from gensight.report.figures import predicted_vs_actual

    console = Console()
    zoo = _open_zoo(args.zoo, "predict")
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
    _print_frame(console, scores, f"predicting {args.target} on {len(test)} held-out networks")
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


def _print_report_summary(console, report) -> None:
    from gensight.report.run import best, summary_tables

    pred, est = summary_tables(report)
    _print_frame(console, pred, "predicting test accuracy of held-out networks")
    if len(est):
        _print_frame(console, est, "label-free accuracy estimates: mean absolute error",
                     digits=2)
    top = best(report.scores, "tau")
    if top is not None:
        console.print(f"best ranking: {top} (Kendall's tau "
                      f"{report.scores.set_index('method').loc[top, 'tau']:.3f})", markup=False)
    if len(report.estimate_mae):
        mean = report.estimate_mae.mean(axis=1)
        console.print(f"best label-free estimator: {mean.idxmin()} (mean absolute error "
                      f"{100 * mean.min():.2f} accuracy points)")
    for note in report.notes:
        console.print(f"note: {note}", markup=False, style="dim")
    console.print(f"report: [bold]{escape(str(report.html))}[/] (tables: "
                  f"{escape(str(report.out))}/*.csv), "
                  f"{report.seconds:.0f} s")


def _report_status(console, quiet: bool):
    import contextlib

    if quiet:
        return contextlib.nullcontext(None)
    return console.status("")


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from gensight.report import build_report

    console = Console()
    zoo = _open_zoo(args.zoo, "report")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods \
        else None
    shifts = [s.strip().replace(":", "-") for s in args.shifts.split(",") if s.strip()] \
        if args.shifts is not None else None
    out = Path(args.out) if args.out else Path(args.zoo) / "report"
    with _report_status(console, args.quiet) as status:
        report = build_report(
            zoo, out, methods=methods, shifts=shifts, target=args.target, split=args.split,
            seed=args.seed, epochs=args.epochs, n_examples=args.examples,
            progress=(lambda m: status.update(escape(m))) if status is not None else None)
    _print_report_summary(console, report)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console

    from gensight.demo import run_demo

    console = Console()
    start = time.perf_counter()
    with _report_status(console, args.quiet) as status:
        def build_progress(done: int, total: int, steps: int) -> None:
            if status is not None:
                status.update(f"training the demo zoo: {done}/{total} networks")

        report = run_demo(args.dir, quick=args.quick, epochs=args.epochs,
                          build_progress=build_progress,
                          progress=(lambda m: status.update(escape(m))) if status is not None
                          else None)
    console.print(f"demo zoo: {report.out.parent / ('zoo-quick' if args.quick else 'zoo')} "
                  f"(reused by the next run; `gensight report` works on it too)", markup=False)
    _print_report_summary(console, report)
    console.print(f"demo done in {time.perf_counter() - start:.0f} s")
    return 0


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    """The split and fitting options shared by ``predict`` and ``report``."""
    parser.add_argument("--target", default="test_acc", help="column to predict")
    parser.add_argument("--split", default="auto", choices=("auto", "seed", "config"),
                        help="hold out the last seed of every configuration (complete grid) "
                        "or a random part of the configurations (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60, help="NFN training epochs (max)")
    parser.add_argument("--examples", type=int, default=1000,
                        help="training examples per member for measures")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gensight",
        description="Predict how well trained neural networks generalize, and learn on their "
        "weights with permutation-equivariant neural functionals.",
    )
    parser.add_argument("--version", action="version", version=f"gensight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ex = sub.add_parser(
        "example",
        help="a tiny tour: weight spaces, neuron permutations and NF-Layers on small nets",
        description="Build a few small CNNs and MLPs, check that permuting hidden neurons "
        "preserves their function, and run HNP/NP neural functionals on their weights.",
    )
    ex.add_argument("--members", type=int, default=4, help="networks per architecture")
    ex.add_argument("--seed", type=int, default=0, help="random seed")
    ex.set_defaults(func=_cmd_example)

    from gensight.inr.cli import register as register_inr
    from gensight.lopt.cli import register as register_lopt
    from gensight.merge.cli import register as register_merge
    from gensight.mixing.cli import register as register_mixing
    from gensight.tickets.cli import register as register_tickets
    from gensight.zoo.cli import register as register_zoo

    register_zoo(sub)
    register_inr(sub)
    register_merge(sub)
    register_mixing(sub)
    register_tickets(sub)
    register_lopt(sub)

    est = sub.add_parser(
        "estimate", help="label-free accuracy estimates under distribution shift",
        description="Estimate each model's accuracy on shifted, unlabeled data with AC, DoC, "
        "CBPE (isotonic-calibrated confidence, as NannyML), ATC (+/- temperature scaling), GDE, "
        "ALine-S and ALine-D. Either a ZOO (stored logits: source = validation split, target = "
        "--shift) or logits files of your own models.")
    est.add_argument("zoo", nargs="?", help="zoo directory built with store_logits = true")
    est.add_argument("--shift", help="NAME[:SEVERITY] of a shifted test set stored in the zoo "
                     "(all its severities when SEVERITY is left out)")
    est.add_argument("--source-logits", help="labeled source logits: .npy (models, N, C) or "
                     ".safetensors (one (N, C) tensor per model)")
    est.add_argument("--source-labels", help="source labels, .npy (N,)")
    est.add_argument("--target-logits", help="unlabeled target logits, same models")
    est.add_argument("--target-labels", help="optional target labels (.npy) to report errors")
    est.add_argument("--partners", metavar="GROUPS",
                     help="with logits files: which models are independent runs (seeds) of one "
                     "configuration, for GDE: groups of model names separated by ';', names by "
                     "',' (e.g. 'model-0,model-1,model-2;model-3,model-4'; .npy models are "
                     "model-0, model-1, ...; .safetensors models are named by their keys), or a "
                     ".json file holding a list of such groups. GDE averages each model's "
                     "agreement with the rest of its group. Without it GDE is left out: the "
                     "files do not say which models share a configuration (a zoo does)")
    est.add_argument("--methods", help="comma-separated subset of: AC, DoC, CBPE, ATC-MC, "
                     "ATC-NE, ATC-MC+TS, ATC-NE+TS, GDE, ALine-S, ALine-D (default: all that "
                     "apply)")
    est.add_argument("--out", help="output directory for CSVs and the figure (default: "
                     "ZOO/estimates or ./gensight-estimate)")
    est.add_argument("--rows", type=int, default=10, help="models shown in the terminal")
    est.set_defaults(func=_cmd_estimate)

    mea = sub.add_parser(
        "measures", help="complexity measures of every member of a zoo",
        description="Compute complexity measures (arXiv 1912.02178) for the final checkpoint of "
        "every member of ZOO and write them as a table (Parquet, or CSV by suffix).")
    mea.add_argument("zoo", nargs="?", help="zoo directory")
    mea.add_argument("--measures", help="comma-separated names, 'cheap' (default: every "
                     "measure without a search) or 'all'; see --list")
    mea.add_argument("--list", action="store_true", help="list the measures and what they cite")
    mea.add_argument("--examples", type=int, default=1000,
                     help="training examples per member for data-dependent measures")
    mea.add_argument("--limit", type=int, help="only the first N members")
    mea.add_argument("--out", help="output table (default: ZOO/measures.parquet)")
    mea.add_argument("--quiet", action="store_true", help="no progress bar")
    mea.set_defaults(func=_cmd_measures)

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
    _add_fit_options(pre)
    pre.add_argument("--test-fraction", type=float, default=0.25)
    pre.add_argument("--out", help="output directory (default: ZOO/predict)")
    pre.set_defaults(func=_cmd_predict)

    rep = sub.add_parser(
        "report", help="one HTML page + CSV tables: predictors, measures, label-free estimates",
        description="Fit and score the predictors of generalization on a seeded split of ZOO, "
        "run the label-free estimators on its shifted test sets, and write a self-contained "
        "HTML page (figures embedded) plus the tables as CSV.")
    rep.add_argument("zoo", help="zoo directory")
    rep.add_argument("--out", help="report directory (default: ZOO/report)")
    rep.add_argument("--methods", help="comma-separated predictors (default: statnn, nfn-hnp, "
                     "nfn-np and five measures; see gensight predict --help)")
    rep.add_argument("--shifts", help="comma-separated NAME-SEVERITY shifted sets with stored "
                     "logits (default: the first two kinds at their middle severity; '' for "
                     "none)")
    _add_fit_options(rep)
    rep.add_argument("--quiet", action="store_true", help="no progress display")
    rep.set_defaults(func=_cmd_report)

    demo = sub.add_parser(
        "demo", help="build a small zoo and write its report (a few minutes on a CPU)",
        description="Train 192 small digits MLPs (cached in DIR/zoo and reused next time), "
        "fit StatNN and NFN predictors and five complexity measures, estimate accuracy on two "
        "shifted test sets without labels, and write DIR/report/index.html.")
    demo.add_argument("--dir", default="gensight-demo",
                      help="working directory for the zoo and the report (default: "
                      "%(default)s)")
    demo.add_argument("--quick", action="store_true",
                      help="16 tiny networks instead of 192 (about 20 s; for tests)")
    demo.add_argument("--epochs", type=int, help="NFN training epochs (default 60; 10 quick)")
    demo.add_argument("--quiet", action="store_true", help="no progress display")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except GensightError as exc:
        print(f"gensight: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gensight: interrupted; rerun the same command to resume (finished work is kept)",
              file=sys.stderr)
        return 130
    except OSError as exc:  # a file the user named: missing, unreadable, disk full, ...
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"gensight: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if os.environ.get("GENSIGHT_DEBUG"):
            raise
        print(f"gensight: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with "
              "GENSIGHT_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
