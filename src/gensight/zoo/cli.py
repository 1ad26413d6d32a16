"""``gensight zoo build | info | verify``: registered by :func:`register` on the main parser."""

from __future__ import annotations

import argparse


def _cmd_build(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from gensight.zoo import ZooSpec, build_zoo, plan_shards

    console = Console(stderr=True)
    spec = ZooSpec.from_toml(args.spec)
    size = spec.check_size(args.allow_large)
    plans = plan_shards(spec)
    console.print(f"zoo [bold]{escape(spec.name)}[/]: {spec.n_members:,} members in "
                  f"{len(plans)} shard(s) -> {escape(str(args.out))} (estimated "
                  f"{_duration(size.seconds)}, {size.disk_bytes / 1e6:,.0f} MB)")
    start = time.perf_counter()
    with Progress(TextColumn("members"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, disable=args.quiet) as bar:
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
    console.print(f"[bold]{escape(m['name'])}[/] ({escape(str(args.zoo))}): dataset "
                  f"{escape(m['spec']['dataset'])}, {m['n_members']} members, {built} built, "
                  f"{state}")
    for note in zoo.notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"weight space: {zoo.space!r}", markup=False)
    if zoo.family == "siren":
        return _siren_info(zoo, console)
    if zoo.table.empty:
        return 0
    table = Table(title="test accuracy at the final checkpoint")
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``zoo build|info|verify`` to the main parser's subcommands."""
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
