"""``gensight tickets build | verify | eval | predict``: winning-ticket masks from the
initialization (NFN paper, arXiv 2302.14040); registered by :func:`register`."""

from __future__ import annotations

import argparse

from gensight.errors import GensightError
from gensight.progress import progress_bar


class TicketsCLIError(GensightError):
    """Bad arguments of ``gensight tickets``."""


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise TicketsCLIError(f"{flag} must be comma-separated integers; got {text!r}") from None


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        if n < 1:
            raise TicketsCLIError(f"--threads must be >= 1; got {n}")
        torch.set_num_threads(n)


def _cmd_build(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console

    from gensight.tickets.config import TicketsConfig
    from gensight.tickets.store import build_tickets

    _threads(args.threads)
    console = Console(stderr=True)
    config = TicketsConfig.from_toml(args.config)
    start = time.perf_counter()
    with progress_bar(console, args.quiet, "IMP trainings") as bar:
        task = bar.add_task("build", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        zoo = build_tickets(config, args.out, progress=progress)
    summary = zoo.summary()
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"done in {time.perf_counter() - start:.1f}s: {len(zoo.init_ids)} inits x "
          f"{config.rounds} rounds in {args.out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from gensight.tickets.store import verify_tickets

    problems = verify_tickets(args.zoo)
    for p in problems:
        print(p)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


def _cmd_eval(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import pandas as pd
    from rich.console import Console

    from gensight.data import load_dataset
    from gensight.tickets.predictor import KINDS, MaskPredictor
    from gensight.tickets.report import (
        evaluate_methods,
        mask_methods,
        oneshot_masks,
        write_report,
    )
    from gensight.tickets.store import TicketZoo

    _threads(args.threads)
    console = Console(stderr=True)
    zoo = TicketZoo.open(args.zoo)
    ids = zoo.init_ids
    if args.test_inits < 1 or args.test_inits >= len(ids):
        raise TicketsCLIError(f"--test-inits must be in 1..{len(ids) - 1} (the zoo holds "
                              f"{len(ids)} inits); got {args.test_inits}")
    rounds = _int_list(args.rounds, "--rounds") if args.rounds else list(
        zoo.config.random_rounds)
    bad = [k for k in rounds if k not in zoo.config.random_rounds]
    if not rounds or bad:
        raise TicketsCLIError(f"--rounds must be among the zoo's random_rounds "
                              f"{list(zoo.config.random_rounds)}; got {rounds}")
    kinds = [k for k in args.predictors.split(",") if k]
    if any(k not in KINDS for k in kinds):
        raise TicketsCLIError(f"--predictors must be among {', '.join(KINDS)}; got "
                              f"{args.predictors!r}")
    if args.objective == "cvae" and "mlp" in kinds:
        raise TicketsCLIError("--objective cvae trains NFN predictors only; pass "
                              "--predictors hnp,np (or one of them)")
    # every predictor is constructed (its arguments checked) before any work
    estimators = {kind: MaskPredictor(kind, objective=args.objective, epochs=args.epochs,
                                      seed=args.seed) for kind in kinds}
    train_ids, test_ids = ids[:-args.test_inits], ids[-args.test_inits:]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, b = zoo.inits(train_ids)
    dataset = load_dataset(zoo.config.dataset)
    if args.target == "imp":
        masks = {k: zoo.masks(k, "imp", train_ids) for k in rounds}
    else:
        with progress_bar(console, args.quiet, "one-shot IMP targets") as bar:
            bar.add_task("targets", total=None)
            masks = oneshot_masks(zoo, train_ids, rounds)
    predictors, fit_seconds = {}, {}
    for kind, est in estimators.items():
        start = time.perf_counter()
        with progress_bar(console, args.quiet, f"fit {kind}") as bar:
            task = bar.add_task("fit", total=args.epochs)
            def fit_progress(epoch: int, _total: int, _loss: float, task=task,
                             bar=bar) -> None:
                bar.update(task, completed=epoch)

            est.fit(zoo.space, w, b, masks, zoo.counts, dataset=dataset,
                    activation=zoo.config.activation, progress=fit_progress)
        fit_seconds[kind] = time.perf_counter() - start
        est.save(out / f"predictor-{kind}.safetensors")
        predictors[f"nfn-{kind}" if kind != "mlp" else "mlp"] = est
    methods = mask_methods(zoo, predictors, test_ids, connected=args.connected)
    with progress_bar(console, args.quiet, "train masked networks") as bar:
        task = bar.add_task("eval", total=None)
        results = evaluate_methods(zoo, methods, test_ids, rounds,
                                   progress=lambda d, n: bar.update(task, completed=d, total=n))
    cost = pd.DataFrame([{"what": f"fit {k} ({args.epochs} epochs, {len(train_ids)} inits)",
                          "seconds": s} for k, s in fit_seconds.items()])
    notes = [f"zoo {args.zoo}: predictors fitted on inits {train_ids[0]}..{train_ids[-1]} "
             f"(objective {args.objective}, target {args.target} masks), evaluated on the "
             f"last {len(test_ids)} inits",
             f"training recipe of every mask: {zoo.config.train}"]
    report = write_report(results, out, cost=cost, notes=notes)
    print(report.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {report.files['page']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from safetensors.torch import save

    from gensight.tickets.predictor import MaskPredictor
    from gensight.zoo.store import atomic_write_bytes

    est = MaskPredictor.load(args.predictor)
    space = est.space_
    if (args.zoo is None) == (args.init is None):
        raise TicketsCLIError("give exactly one of --zoo ZOO or --init CHECKPOINT")
    if args.init is not None and args.inits is not None:
        raise TicketsCLIError("--inits selects inits of --zoo; it cannot be used with --init")
    if args.zoo is not None:
        from gensight.tickets.store import TicketZoo

        zoo = TicketZoo.open(args.zoo)
        if zoo.space != space:
            raise TicketsCLIError(f"the predictor is for {space!r}; {args.zoo!r} holds "
                                  f"{zoo.space!r}")
        ids = _int_list(args.inits, "--inits") if args.inits else zoo.init_ids
        w, b = zoo.inits(ids)
        counts_all = zoo.counts
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(args.init)
        except (SafetensorError, OSError) as exc:
            raise TicketsCLIError(f"--init {args.init!r} is not a safetensors checkpoint: "
                                  f"{exc}") from None
        missing = [k for k in space.state_dict_keys() if k not in state]
        if missing:
            raise TicketsCLIError(f"--init {args.init!r} lacks {missing[:3]}; expected the keys "
                                  f"{list(space.state_dict_keys())}")
        w = [state[ly.weight_key].float().unsqueeze(0) for ly in space.layers]
        b = [state[ly.bias_key].float().unsqueeze(0) for ly in space.layers]
        for ly, tw, tb in zip(space.layers, w, b, strict=True):
            for key, t, shape in ((ly.weight_key, tw, ly.weight_shape),
                                  (ly.bias_key, tb, ly.bias_shape)):
                if tuple(t.shape[1:]) != tuple(shape):
                    raise TicketsCLIError(f"--init {args.init!r}: {key!r} has shape "
                                          f"{tuple(t.shape[1:])}; expected {tuple(shape)}")
        ids = [0]
        counts_all = est.counts_
    if not 1 <= args.round < len(counts_all):
        raise TicketsCLIError(f"--round must be in 1..{len(counts_all) - 1}; got {args.round}")
    counts = counts_all[args.round]
    masks = est.predict(w, b, counts, z_seed=args.z_seed, connected=args.connected)
    tensors = {ly.weight_key: m.to(torch.uint8).contiguous()
               for ly, m in zip(space.layers, masks, strict=True)}
    meta = {"round": str(args.round), "counts": str(list(counts)), "inits": str(ids)}
    if args.z_seed is not None:
        meta["z_seed"] = str(args.z_seed)
    if args.connected:
        meta["decoding"] = "connected"
    atomic_write_bytes(Path(args.out), save(tensors, metadata=meta))
    print(f"wrote {len(ids)} mask(s) keeping {list(counts)} weights per layer to {args.out}")
    return 0


def _z_seed(text: str) -> int:
    """argparse type of ``--z-seed``: an integer in 0..2^63-1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..2^63-1; got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gensight tickets`` to the main parser's subcommands."""
    p = sub.add_parser(
        "tickets", help="winning-ticket masks: IMP zoos and mask predictors (NFN)",
        description="Lottery tickets from the initialization (NFN paper, arXiv 2302.14040): "
        "build a zoo of IMP masks (iterative magnitude pruning with rewinding, run as a "
        "population), fit equivariant NFN mask predictors (HNP, NP) and an MLP baseline on "
        "it, and compare the trained accuracy of their masks with IMP, magnitude at init, "
        "SNIP and random masks on held-out inits.")
    tsub = p.add_subparsers(dest="tickets_command", metavar="COMMAND", required=True)
    build = tsub.add_parser("build", help="run IMP for every init of CONFIG into a tickets zoo",
                            description="Run IMP with rewinding for every init of a TOML "
                            "config (see examples/tickets/digits.toml) and store initial "
                            "weights, the masks of every round (uint8 safetensors), ticket "
                            "and random-mask accuracies. Rerun to resume a killed build.")
    build.add_argument("config", help="TOML config")
    build.add_argument("--out", required=True, help="output directory (the tickets zoo)")
    build.add_argument("--threads", type=int, help="torch CPU threads")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_build)
    ver = tsub.add_parser("verify", help="check a tickets zoo's hashes, masks and rows")
    ver.add_argument("zoo")
    ver.set_defaults(func=_cmd_verify)
    ev = tsub.add_parser("eval", help="fit mask predictors and compare mask methods (report)",
                         description="Fit the mask predictors on all but the last "
                         "--test-inits inits of ZOO, then train the held-out inits with masks "
                         "from IMP, one-shot IMP (imp-oneshot), each predictor, magnitude at "
                         "init, SNIP and random at each round; writes OUT/index.html, "
                         "results.csv, summary.csv and OUT/predictor-KIND.safetensors.")
    ev.add_argument("zoo")
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--test-inits", type=int, default=128, help="held-out inits (default 128)")
    ev.add_argument("--rounds", help="comma-separated rounds (default: the zoo's random_rounds)")
    ev.add_argument("--predictors", default="hnp,np,mlp",
                    help="comma-separated: hnp, np, mlp (default all)")
    ev.add_argument("--objective", default="bce",
                    help="bce | bce+unroll | cvae (the NFN paper's conditional VAE; NFN "
                    "predictors only) (default bce)")
    ev.add_argument("--target", choices=("imp", "imp-oneshot"), default="imp",
                    help="masks the predictors learn: the stored IMP masks of each round, "
                    "or one-shot IMP masks at each round's counts (one IMP step to the "
                    "density, the NFN paper's protocol) (default imp)")
    ev.add_argument("--epochs", type=int, default=30, help="predictor training epochs")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--connected", action="store_true",
                    help="also evaluate every predictor's masks decoded avoiding dead ends "
                    "(as METHOD+connected; see tickets predict --connected)")
    ev.add_argument("--threads", type=int, help="torch CPU threads")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=_cmd_eval)
    pr = tsub.add_parser("predict", help="masks from a fitted predictor",
                         description="Write the predicted masks (uint8 safetensors, one "
                         "(inits, n_out, n_in) tensor per weight key) of a zoo's inits or of "
                         "one initial checkpoint at the per-layer counts of IMP round --round.")
    pr.add_argument("predictor", help="predictor-KIND.safetensors written by tickets eval")
    pr.add_argument("--zoo", help="a tickets zoo whose inits to mask")
    pr.add_argument("--inits", help="zoo: comma-separated init ids (default all)")
    pr.add_argument("--init", help="a safetensors checkpoint of one initial MLP")
    pr.add_argument("--round", type=int, required=True, help="IMP round whose counts to keep")
    pr.add_argument("--out", required=True, help="output .safetensors")
    pr.add_argument("--z-seed", type=_z_seed, default=None,
                    help="a predictor fitted with --objective cvae: decode a draw from the "
                    "latent prior with this seed (another ticket per seed) instead of its mean")
    pr.add_argument("--connected", action="store_true",
                    help="avoid dead ends: move the budget of weights into a hidden unit "
                    "without kept outgoing weights, or out of one without kept incoming "
                    "weights, to the best weights between connected units where possible")
    pr.set_defaults(func=_cmd_predict)
