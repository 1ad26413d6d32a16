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

    from gensight.estimate.cli import register as register_estimate
    from gensight.inr.cli import register as register_inr
    from gensight.lopt.cli import register as register_lopt
    from gensight.measures.cli import register as register_measures
    from gensight.merge.cli import register as register_merge
    from gensight.mixing.cli import register as register_mixing
    from gensight.predict.cli import register as register_predict
    from gensight.report.cli import register as register_report
    from gensight.tickets.cli import register as register_tickets
    from gensight.zoo.cli import register as register_zoo

    for register in (register_zoo, register_inr, register_merge, register_mixing,
                     register_tickets, register_lopt, register_estimate, register_measures,
                     register_predict, register_report):
        register(sub)

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
