"""``gensight estimate``: label-free accuracy estimates under shift; registered by
:func:`register`."""

from __future__ import annotations

import argparse

from gensight.cliutil import escape, open_classifier_zoo


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
        zoo = open_classifier_zoo(args.zoo, "estimate")
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gensight estimate`` to the main parser's subcommands."""
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
