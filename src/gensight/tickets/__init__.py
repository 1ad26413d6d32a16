"""Winning-ticket masks from the initialization (NFN paper, Zhou et al., arXiv 2302.14040).

- IMP with rewinding to the initialization (Frankle & Carbin, arXiv 1803.03635), run as a
  population: :func:`run_imp`, :func:`train_masked` (pruned weights and their optimizer
  state stay exactly zero).
- The tickets zoo: :func:`build_tickets`, :class:`TicketZoo`, :func:`verify_tickets`
  (initial weights, uint8 masks of every round, ticket and random-mask accuracies;
  atomic and resumable).
- Mask predictors: :class:`MaskPredictor` (``"hnp"``, ``"np"`` equivariant NFNs and an
  ``"mlp"`` baseline), class-balanced BCE on IMP masks, optionally plus an unrolled
  training of the masked network through a straight-through top-k
  (:class:`StraightThroughTopK`).
- Baselines and masks: :func:`magnitude_masks`, :func:`random_masks`, :func:`layer_topk`,
  :func:`pruning_schedule`.
- Evaluation and the HTML report: :func:`evaluate_methods`, :func:`write_report`.

What was checked against the paper: only its abstract and first page could be retrieved
here; they confirm the task ("producing winning ticket sparsity masks for
initializations") and the NF-Layers used (``gensight.nf``). The paper's winning-ticket
protocol (objective, architectures, sparsities, numbers) could not be read, so the recipe
here (class-balanced BCE on IMP masks, the unrolled straight-through objective, the density
input channel, the CPU-sized digits MLP) is gensight's own design, following research note
04; the output layer's half pruning rate is Frankle & Carbin's fully connected setting
(from general knowledge, not re-checked here).
"""

from gensight.tickets.config import TicketsConfig, TicketsConfigError, TrainConfig
from gensight.tickets.masks import (
    MaskError,
    StraightThroughTopK,
    layer_topk,
    magnitude_masks,
    magnitude_prune,
    pruning_schedule,
    random_masks,
    straight_through_topk,
    topk_mask,
)
from gensight.tickets.predictor import MaskMLP, MaskNFN, MaskPredictor, PredictorError
from gensight.tickets.report import evaluate_methods, mask_methods, summarize, write_report
from gensight.tickets.store import TicketsStoreError, TicketZoo, build_tickets, verify_tickets
from gensight.tickets.train import IMPResult, MaskedRun, init_weights, run_imp, train_masked

__all__ = [
    "IMPResult",
    "MaskError",
    "MaskMLP",
    "MaskNFN",
    "MaskPredictor",
    "MaskedRun",
    "PredictorError",
    "StraightThroughTopK",
    "TicketZoo",
    "TicketsConfig",
    "TicketsConfigError",
    "TicketsStoreError",
    "TrainConfig",
    "build_tickets",
    "evaluate_methods",
    "init_weights",
    "layer_topk",
    "magnitude_masks",
    "magnitude_prune",
    "mask_methods",
    "pruning_schedule",
    "random_masks",
    "run_imp",
    "straight_through_topk",
    "summarize",
    "topk_mask",
    "train_masked",
    "verify_tickets",
    "write_report",
]
