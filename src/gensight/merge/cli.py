"""``gensight merge``: align-and-average networks of a zoo or a set of checkpoints, and write
the merged network (safetensors) with a report; registered by :func:`register`."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

from torch import nn

from gensight.errors import GensightError
from gensight.zoo.train import _ACT_MODULES as _ACTS  # the zoo's activations, by name


class MergeCLIError(GensightError):
    """Bad arguments or inputs of ``gensight merge``."""


def _parse_tasks(text: str | None, n: int) -> list[list[int]] | None:
    if text is None:
        return None
    try:
        subsets = [[int(c) for c in part.split(",")] for part in text.split(";")]
    except ValueError:
        raise MergeCLIError(f"--tasks must be label lists separated by ';' (e.g. "
                            f"'0,1,2;3,4,5'); got {text!r}") from None
    if len(subsets) != n:
        raise MergeCLIError(f"--tasks names {len(subsets)} label subsets for {n} networks; "
                            "give one per network")
    return subsets


def _parse_reference(text: str) -> int | str:
    if text == "average":
        return text
    try:
        return int(text)
    except ValueError:
        raise MergeCLIError(f"--reference must be a member index or 'average'; got "
                            f"{text!r}") from None


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise MergeCLIError(f"--weights must be comma-separated numbers; got {text!r}") \
            from None


def module_from_state(state: dict, activation: str, where: str) -> nn.Module:
    """Rebuild a network from its parameters: a :class:`~gensight.merge.RecurrentClassifier`
    (keys ``rnn.*`` and ``readout.*``) or an ``nn.Sequential`` MLP (keys ``"{i}.weight"``,
    ``"{i}.bias"`` of 2-D weights; ``Flatten`` first, ``activation`` between layers)."""
    from gensight.merge.spec import RecurrentClassifier

    if "rnn.weight_hh_l0" in state:
        for key in ("rnn.weight_ih_l0", "readout.weight"):
            if key not in state:
                raise MergeCLIError(f"{where}: has rnn.weight_hh_l0 but no {key!r}; expected a "
                                    "gensight RecurrentClassifier (GRU/LSTM and a readout)")
        for key in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "readout.weight"):
            if state[key].dim() != 2 or 0 in state[key].shape:
                raise MergeCLIError(f"{where}: {key!r} has shape {tuple(state[key].shape)}; "
                                    "expected a non-empty 2-D weight matrix")
        w_ih, w_hh = state["rnn.weight_ih_l0"], state["rnn.weight_hh_l0"]
        hidden = w_hh.shape[1]
        gates, rest = divmod(w_hh.shape[0], hidden)
        if rest or gates not in (3, 4):
            raise MergeCLIError(f"{where}: 'rnn.weight_hh_l0' of shape {tuple(w_hh.shape)} is "
                                "neither a GRU's (3 gates) nor an LSTM's (4 gates)")
        net = RecurrentClassifier(w_ih.shape[1], hidden, state["readout.weight"].shape[0],
                                  "gru" if gates == 3 else "lstm")
    else:
        prefixes = sorted({k.rsplit(".", 1)[0] for k in state},
                          key=lambda p: (not p.isdigit(), int(p) if p.isdigit() else 0, p))
        bad = [p for p in prefixes if not p.isdigit() or state.get(f"{p}.weight") is None
               or state[f"{p}.weight"].dim() != 2]
        if bad or not prefixes:
            raise MergeCLIError(
                f"{where}: cannot rebuild the network from its keys (expected an MLP's "
                f"'<index>.weight' 2-D tensors or a gensight RecurrentClassifier); offending "
                f"prefixes {bad[:3] or prefixes[:3]}; merge CNNs from a zoo instead")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for i, p in enumerate(prefixes):
            w = state[f"{p}.weight"]
            layers[p] = nn.Linear(w.shape[1], w.shape[0], bias=f"{p}.bias" in state)
            if i < len(prefixes) - 1:
                layers[f"act{p}"] = _ACTS[activation]()
        net = nn.Sequential(layers)
    expected = {k: tuple(v.shape) for k, v in net.named_parameters()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise MergeCLIError(f"{where}: parameters {got} do not chain into a network "
                            f"(expected {expected})")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


def _load_checkpoints(paths: list[str], activation: str) -> list[nn.Module]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    models = []
    for p in paths:
        if not Path(p).is_file():
            raise MergeCLIError(f"{p!r} is neither a zoo directory nor a checkpoint file")
        try:
            state = load_file(p)
        except (SafetensorError, OSError, ValueError) as exc:
            raise MergeCLIError(f"{p!r} is not a safetensors checkpoint: {exc}") from None
        models.append(module_from_state(state, activation, repr(p)))
    return models


def _cmd_merge(args: argparse.Namespace) -> int:
    import torch

    from gensight.data import load_dataset
    from gensight.errors import IncompatibleSpaceError, NonFiniteWeightsError
    from gensight.merge.align import check_models
    from gensight.merge.fleet import Task, label_subset_tasks
    from gensight.merge.report import barrier_summary, merge_report

    if args.method not in ("weight", "activation"):
        raise MergeCLIError(f"--method must be 'weight' or 'activation'; got {args.method!r}")
    if args.activation not in _ACTS:
        raise MergeCLIError(f"--activation must be one of {', '.join(_ACTS)}; got "
                            f"{args.activation!r}")
    if args.joint_steps < 0 or args.members < 2 or args.points < 2:
        raise MergeCLIError("--joint-steps must be >= 0, --members >= 2 and --points >= 2")
    reference = _parse_reference(args.reference)
    weights = _parse_weights(args.weights)
    torch.manual_seed(args.seed)
    sources = list(args.sources)
    if len(sources) == 1 and Path(sources[0]).is_dir():
        from gensight.zoo import Zoo

        zoo = Zoo.open(sources[0])
        if zoo.family not in ("mlp", "cnn"):
            raise MergeCLIError(f"{sources[0]!r} is a {zoo.family!r} zoo; gensight merge reads "
                                "classifier zoos of family mlp or cnn (merge GRUs or residual "
                                "networks as modules: gensight.merge's Python API)")
        rows = zoo.table.query("is_final")
        if "finite" in rows.columns:
            rows = rows[rows["finite"].astype(bool)]
        if args.query:
            try:
                rows = rows.query(args.query)
            except Exception as exc:  # pandas raises many kinds for a bad expression
                raise MergeCLIError(f"--query {args.query!r} failed on the zoo table: "
                                    f"{type(exc).__name__}: {exc}") from None
        rows = rows.head(args.members)
        if len(rows) < 2:
            raise MergeCLIError(f"zoo {sources[0]!r}: {len(rows)} final finite member(s) "
                                "selected; merging needs at least 2")
        models = zoo.modules(rows)
        names = [f"{sources[0]}:{m}" for m in rows["member_id"]]
        dataset_name = zoo.manifest["spec"]["dataset"]
        out = Path(args.out) if args.out else Path(sources[0]) / "merge"
    else:
        if len(sources) < 2:
            raise MergeCLIError("give one zoo directory or at least 2 checkpoint files; got "
                                f"{sources}")
        models = _load_checkpoints(sources, args.activation)
        names = sources
        dataset_name = args.dataset
        out = Path(args.out) if args.out else Path("gensight-merge")
    for i, m in enumerate(models):
        try:
            check_models([models[0], m], "network")
        except (IncompatibleSpaceError, NonFiniteWeightsError) as exc:
            msg = str(exc).replace("network 1", f"network {i} ({names[i]})").replace(
                "network 0", f"network 0 ({names[0]})")
            raise type(exc)(msg) from None
    data = load_dataset(dataset_name)
    try:
        with torch.no_grad():
            models[0].eval()(data.x_test[:2])
    except (RuntimeError, GensightError) as exc:
        raise MergeCLIError(f"the networks do not take {data.name} inputs of shape "
                            f"{tuple(data.input_shape)}: {exc}") from None
    subsets = _parse_tasks(args.tasks, len(models))
    if subsets is None:
        tasks = [Task(f"{data.name} (member {i})", data.x_train, data.y_train, data.x_test,
                      data.y_test) for i in range(len(models))]
    else:
        tasks = label_subset_tasks(data, subsets)
    report = merge_report(models, tasks, out, method=args.method, reference=reference,
                          weights=weights, joint_steps=args.joint_steps, points=args.points,
                          seed=args.seed, sources=names)
    print(report.accuracy.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for path, value in barrier_summary(report.barrier).items():
        print(f"loss barrier, {path}: {value:.4f}")
    print(f"wrote {report.files['merged']} and the report {report.files['page']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gensight merge`` to the main parser's subcommands."""
    p = sub.add_parser(
        "merge", help="align hidden units and average networks (FLEET-MERGE)",
        description="Merge the final members of a zoo (or safetensors checkpoints of MLPs and "
        "gensight RecurrentClassifiers) by aligning every network's hidden units to a "
        "reference (weight or activation matching, Git Re-Basin arXiv 2209.04836) and "
        "averaging (FLEET-MERGE arXiv 2310.01362). Writes OUT/merged.safetensors and a report: "
        "accuracy on each member's task of the merged network vs naive averaging vs each "
        "member alone vs the ensemble vs joint training, and the loss barrier between members "
        "0 and 1 before and after alignment (accuracy.csv, barrier.csv, index.html).")
    p.add_argument("sources", nargs="+", help="a zoo directory, or 2+ .safetensors checkpoints")
    p.add_argument("--method", default="weight", help="weight | activation (default weight)")
    p.add_argument("--reference", default="0",
                   help="member index to align to, or 'average' (default 0)")
    p.add_argument("--weights", help="comma-separated averaging weights, one per network")
    p.add_argument("--members", type=int, default=4,
                   help="zoo: merge the first N final members (default 4)")
    p.add_argument("--query", help="zoo: pandas query selecting members, e.g. 'lr > 0.01'")
    p.add_argument("--dataset", default="digits",
                   help="checkpoints: dataset to evaluate on (default digits)")
    p.add_argument("--tasks", help="label subsets, one per network ('0,1,2;3,4,5;...'): "
                   "member i's task; default: the whole dataset for everyone")
    p.add_argument("--activation", default="relu",
                   help="checkpoints: activation between MLP layers (default relu)")
    p.add_argument("--joint-steps", type=int, default=300,
                   help="Adam steps of the joint-training baseline (0: leave it out)")
    p.add_argument("--points", type=int, default=11, help="alphas on the linear path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default ZOO/merge or ./gensight-merge)")
    p.set_defaults(func=_cmd_merge)
