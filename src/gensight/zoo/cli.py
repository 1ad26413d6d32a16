"""``gensight zoo build | info | verify | import``: registered by :func:`register` on the main
parser."""

from __future__ import annotations

import argparse


def _cmd_build(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.markup import escape

    from gensight.progress import progress_bar
    from gensight.zoo import ZooSpec, build_zoo, plan_shards

    console = Console(stderr=True)
    spec = ZooSpec.from_toml(args.spec)
    size = spec.check_size(args.allow_large)
    plans = plan_shards(spec)
    console.print(f"zoo [bold]{escape(spec.name)}[/]: {spec.n_members:,} members in "
                  f"{len(plans)} shard(s) -> {escape(str(args.out))} (estimated "
                  f"{_duration(size.seconds)}, {size.disk_bytes / 1e6:,.0f} MB)")
    start = time.perf_counter()
    with progress_bar(console, args.quiet, "members", "{task.fields[rate]}") as bar:
        task = bar.add_task("build", total=spec.n_members, rate="")
        first_done: list[int] = []

        def progress(done: int, total: int, steps: int) -> None:
            if not first_done:
                first_done.append(done)
            elapsed = time.perf_counter() - start
            new = done - first_done[0]
            rate = f"{new / elapsed:.1f} members/s" if new and elapsed > 0 else ""
            bar.update(task, completed=done, rate=rate)

        zoo = build_zoo(spec, args.out, progress=progress, backend=args.backend,
                        ray_address=args.ray_address, allow_large=args.allow_large,
                        log=lambda line: console.print(f"note: {line}", markup=False))
    console.print(f"done in {time.perf_counter() - start:.1f}s: {len(zoo.table)} rows "
                  f"(members x checkpoints) in {args.out}", markup=False)
    return 0


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"~{seconds / size:.1f} {unit}"
    return f"~{seconds:.0f} s"


def _cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from gensight.zoo import Zoo, verify_zoo

    zoo = Zoo.open(args.zoo)
    m = zoo.manifest
    console = Console()
    built = zoo.table["member_id"].nunique() if len(zoo.table) else 0
    damaged = dict(zoo.damaged)
    if not args.no_verify:
        damaged.update(verify_zoo(zoo.root).damaged_shards)
    if damaged:
        state = (f"damaged: {len(damaged)} shard(s) fail verification (gensight zoo verify "
                 "--repair, then zoo build)")
    elif zoo.complete:
        state = "complete" + ("" if args.no_verify else ", verified")
    else:
        state = "incomplete (resume with zoo build)"
    dataset = "n/a (imported)" if "imported" in m else m["spec"]["dataset"]
    console.print(f"[bold]{escape(m['name'])}[/] ({escape(str(args.zoo))}): dataset "
                  f"{escape(dataset)}, {m['n_members']} members, {built} built, "
                  f"{state}")
    for note in zoo.notes:
        console.print(f"note: {note}", markup=False)
    if "imported" in m:
        origin = m["imported"]
        console.print(f"imported ({origin.get('format')}) from {origin.get('source')}; its spec "
                      "is a placeholder (dataset and training fields do not apply)", markup=False)
    console.print(f"weight space: {zoo.space!r}", markup=False)
    if zoo.family == "siren":
        return _siren_info(zoo, console)
    if zoo.table.empty:
        return 0
    what = "test success rate (exact answers)" if zoo.family == "gru" else "test accuracy"
    table = Table(title=f"{what} at the final checkpoint")
    for col in ("optimizer", "activation", "members", "mean", "std", "min", "median", "max",
                "mean gap"):
        table.add_column(col, justify="left" if col in ("optimizer", "activation") else "right")
    for (opt, act), row in zoo.summary().iterrows():
        table.add_row(escape(str(opt)), escape(str(act)), str(int(row["members"])),
                      *(f"{row[c]:.3f}" for c in ("mean", "std", "min", "median", "max",
                                                  "mean_gap")))
    console.print(table)
    final = zoo.table[zoo.table["is_final"]]
    if zoo.shifted_sets:
        shifted = Table(title="mean accuracy on shifted test sets (final checkpoint)")
        shifted.add_column("set")
        shifted.add_column("mean acc", justify="right")
        for name in zoo.shifted_sets:
            shifted.add_row(escape(name), f"{final[f'shift:{name}_acc'].mean():.3f}")
        console.print(shifted)
    return 0


def _siren_info(zoo, console) -> int:
    """``zoo info`` of a SIREN zoo: its recipe and the PSNR of its fits per split."""
    from rich.table import Table

    spec, arch = zoo.manifest["spec"], zoo.manifest["spec"]["architecture"]
    recipe = spec["siren"]
    widths = "-".join(map(str, [2, *arch["hidden"], 1]))
    target = ("none" if recipe["target_psnr"] is None else f"{recipe['target_psnr']:g} dB")
    console.print(f"SIREN {widths}, omega_0 {arch['omega_0']:g}; {recipe['fits_per_image']} "
                  f"fit(s) per image, at most {recipe['steps']} Adam steps, lr "
                  f"{recipe['lr']:g}, early stop {target}", markup=False)
    if zoo.table.empty:
        return 0
    summary = zoo.summary()
    console.print(f"median PSNR {summary.loc['all', 'median']:.2f} dB over "
                  f"{int(summary.loc['all', 'members'])} members", markup=False)
    table = Table(title="PSNR (dB) of the fits, per split of their images")
    for col in ("split", "members", "mean", "std", "min", "median", "max", "median steps"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, row in summary.iterrows():
        table.add_row(str(split), str(int(row["members"])),
                      *(f"{row[c]:.2f}" for c in ("mean", "std", "min", "median", "max")),
                      f"{row['median_steps']:.0f}")
    console.print(table)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gensight.zoo import verify_zoo

    console = Console()
    report = verify_zoo(args.zoo, repair=args.repair)
    say = lambda line: console.print(line, markup=False)  # noqa: E731
    say(f"{args.zoo}: {len(report.ok_shards)} of {report.n_shards} shard(s) intact, "
        f"{len(report.damaged_shards)} damaged, {len(report.missing_shards)} not built "
        f"({report.seconds:.2f} s)")
    for i, why in report.damaged_shards.items():
        say(f"damaged shard {i}: {why}")
    for what, why in report.problems.items():
        say(f"{what}: {why}")
    for line in report.repaired:
        say(f"repaired: {line}")
    if report.ok:
        say("ok" + (f"; {len(report.missing_shards)} shard(s) still to build: rerun zoo build"
                    if report.missing_shards else ""))
        return 0
    if args.repair:
        todo = len(report.missing_shards) + len(report.damaged_shards)
        say("repaired" + (f"; rerun zoo build to train {todo} shard(s)" if todo else ""))
        return 0
    say("damaged: run gensight zoo verify --repair (nothing is deleted: damaged shards are "
        "moved to ZOO/damaged/), then zoo build")
    return 1


def _load_template(text: str):
    """``MODULE:CALLABLE`` or ``FILE.py:CALLABLE`` -> the ``nn.Module`` it names (called
    without arguments when it is not a module already)."""
    import importlib
    import importlib.util

    from torch import nn

    from gensight.zoo.importers import ZooImportError

    where, sep, attr = text.rpartition(":")
    if not sep or not where or not attr:
        raise ZooImportError(f"--template {text!r}: expected MODULE:CALLABLE or FILE.py:CALLABLE")
    try:
        if where.endswith(".py"):
            spec = importlib.util.spec_from_file_location("gensight_template", where)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {where}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        obj = getattr(module, attr)
        template = obj if isinstance(obj, nn.Module) else obj()
    except Exception as exc:  # the user's code: any error, reported in one line
        raise ZooImportError(f"--template {text!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(template, nn.Module):
        raise ZooImportError(f"--template {text!r} gave a {type(template).__name__}, not an "
                             "nn.Module")
    return template


def _cmd_import(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console

    from gensight.progress import progress_bar
    from gensight.zoo.importers import LayoutColumns, import_checkpoints, import_small_cnn_zoo

    console = Console(stderr=True)
    start = time.perf_counter()
    with progress_bar(console, args.quiet, "importing") as bar:
        task = bar.add_task("import", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if args.import_format == "checkpoints":
            template = _load_template(args.template) if args.template else None
            zoo = import_checkpoints(args.dir, args.csv, args.out, architecture=template,
                                     file_column=args.file_column, shard_size=args.shard_size,
                                     progress=progress)
        else:
            name, shape, first, end = (c.strip() for c in args.layout_columns.split(","))
            zoo = import_small_cnn_zoo(args.weights, args.layout, args.metrics, args.out,
                                       checkpoint=args.checkpoint,
                                       layout_columns=LayoutColumns(name, shape, first, end),
                                       shard_size=args.shard_size, progress=progress)
    console.print(f"imported {len(zoo.table)} networks into {args.out} in "
                  f"{time.perf_counter() - start:.1f}s; weight space {zoo.space!r}", markup=False)
    return 0


def _layout_columns(text: str) -> str:
    if len([c for c in text.split(",") if c.strip()]) != 4:
        raise argparse.ArgumentTypeError("expected NAME,SHAPE,START,END")
    return text


def _register_import(zoo_sub) -> None:
    imp = zoo_sub.add_parser(
        "import", help="import networks trained elsewhere (checkpoints, the Small CNN Zoo)",
        description="Import a population of trained networks into a new zoo directory (written "
        "to a temporary directory and renamed into place: a failed import leaves nothing).")
    imp_sub = imp.add_subparsers(dest="import_format", metavar="FORMAT", required=True)
    ck = imp_sub.add_parser(
        "checkpoints", help="a directory of checkpoints and a CSV of their metrics",
        description="DIR holds *.safetensors, *.pt or *.pth checkpoints (state dicts; .pt/.pth "
        "are read with torch.load(weights_only=True) and anything else is refused). The CSV "
        "has one row per checkpoint: a column naming the file, metrics such as test_acc, "
        "optional hyperparameter columns (integer config_id / seed_index group seeds).")
    ck.add_argument("dir", help="checkpoint directory")
    ck.add_argument("--csv", required=True, help="one row per checkpoint")
    ck.add_argument("--file-column", default="file",
                    help="CSV column naming the checkpoint file (default: %(default)s)")
    ck.add_argument("--template", help="MODULE:CALLABLE or FILE.py:CALLABLE giving an nn.Module "
                    "that describes the checkpoints (default: inferred from a plain "
                    "nn.Sequential state dict)")
    sc = imp_sub.add_parser(
        "small-cnn-zoo", help="the Small CNN Zoo (Unterthiner et al. 2020) format",
        description="Import the networks of one Small CNN Zoo collection: the weight matrix "
        "(weights.npy), layout.csv and metrics.csv(.gz). TensorFlow kernels are converted to "
        "torch layout (conv HWIO -> OIHW, dense transposed).")
    sc.add_argument("--weights", required=True, help="weights.npy (networks x parameters)")
    sc.add_argument("--layout", required=True, help="layout.csv")
    sc.add_argument("--metrics", required=True, help="metrics.csv or metrics.csv.gz")
    sc.add_argument("--checkpoint", default="final",
                    help="'final' (each network's last step, default) or a step number")
    sc.add_argument("--layout-columns", type=_layout_columns,
                    default="varname,shape,start_idx,end_idx",
                    help="layout.csv's columns NAME,SHAPE,START,END (default: %(default)s)")
    for p in (ck, sc):
        p.add_argument("--out", required=True, help="new zoo directory")
        p.add_argument("--shard-size", type=int, default=256, help="members per shard "
                       "(default: %(default)s)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=_cmd_import)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``zoo build|info|verify|import`` to the main parser's subcommands."""
    zoo = sub.add_parser("zoo", help="build, inspect and verify model zoos",
                         description="Build, inspect and verify model zoos.")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    build = zoo_sub.add_parser(
        "build", help="train a zoo spec's members into a directory (resumable)",
        description="Train the members of SPEC (a TOML zoo spec) into OUT. Rerunning the same "
        "command after an interruption resumes it without losing or duplicating members; "
        "damaged shards are moved to OUT/damaged/ and trained again.")
    build.add_argument("spec", help="zoo spec (TOML)")
    build.add_argument("--out", required=True, help="zoo directory")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local (default): this process; ray: shards as Ray tasks")
    build.add_argument("--ray-address", default=None,
                       help="Ray cluster address (default: start a local Ray instance); the "
                       "--out directory must be on a filesystem every worker sees")
    build.add_argument("--allow-large", action="store_true",
                       help="build a spec even if it is very large (see ZooSpec.check_size)")
    build.set_defaults(func=_cmd_build)
    info = zoo_sub.add_parser("info", help="summarize a zoo directory (and verify its shards)")
    info.add_argument("zoo", help="zoo directory")
    info.add_argument("--no-verify", action="store_true",
                      help="skip checking every shard's content hash")
    info.set_defaults(func=_cmd_info)
    verify = zoo_sub.add_parser(
        "verify", help="check every shard, the index and the manifest of a zoo",
        description="Check the manifest's spec against its hash, every shard's content hashes, "
        "members and tensor shapes, and the index against the shards. Exit status 1 if "
        "anything is damaged. --repair moves damaged shards to ZOO/damaged/ (rerun zoo build "
        "to train them again) and rewrites the index from the intact shards.")
    verify.add_argument("zoo", help="zoo directory")
    verify.add_argument("--repair", action="store_true",
                        help="move damaged shards aside and rebuild the index")
    verify.set_defaults(func=_cmd_verify)
    _register_import(zoo_sub)
