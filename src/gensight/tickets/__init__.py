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
  (:class:`StraightThroughTopK`), or the paper's conditional VAE (:class:`MaskCVAE`).
- One-shot IMP, the paper's protocol (one IMP step straight to the target density):
  :func:`oneshot_imp`, :func:`oneshot_masks` (baseline ``imp-oneshot`` and a predictor
  target).
- Baselines and masks: :func:`magnitude_masks`, :func:`snip_masks` (SNIP, arXiv
  1810.02340; :func:`snip_scores`), :func:`random_masks`, :func:`layer_topk`,
  :func:`connected_topk` (top-k avoiding dead-end weights), :func:`pruning_schedule`.
- Evaluation and the HTML report: :func:`evaluate_methods`, :func:`write_report`.

Against the paper: its full text (NeurIPS 2023, Table 5, App. D.2) was read after this
package was written. The paper prunes one step of IMP to 95% sparsity (MNIST MLPs with 128
hidden units, CIFAR-10 CNNs; 400 training and 50 held-out inits) and predicts masks with a
conditional VAE of NF-Layers trained on the IMP masks (``objective="cvae"``). The other
objectives are gensight's own: class-balanced BCE on IMP masks and the unrolled
straight-through objective. Also gensight's: the density input channel, several IMP rounds
with the output layer pruned at half the rate (Frankle & Carbin's
fully connected setting) and the CPU-sized digits MLPs (``examples/tickets/digits.toml``;
``digits-wide.toml`` has the paper's width).
"""

from gensight.tickets.config import TicketsConfig, TicketsConfigError, TrainConfig
from gensight.tickets.masks import (
    MaskError,
    StraightThroughTopK,
    connected_topk,
    layer_topk,
    magnitude_masks,
    magnitude_prune,
    pruning_schedule,
    random_masks,
    snip_masks,
    snip_scores,
    straight_through_topk,
    topk_mask,
)
from gensight.tickets.predictor import (
    MaskCVAE,
    MaskMLP,
    MaskNFN,
    MaskPredictor,
    PredictorError,
)
from gensight.tickets.report import (
    evaluate_methods,
    mask_methods,
    oneshot_masks,
    summarize,
    write_report,
)
from gensight.tickets.store import TicketsStoreError, TicketZoo, build_tickets, verify_tickets
from gensight.tickets.train import (
    IMPResult,
    MaskedRun,
    init_weights,
    oneshot_imp,
    run_imp,
    train_masked,
)

__all__ = [
    "IMPResult",
    "MaskCVAE",
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
    "connected_topk",
    "evaluate_methods",
    "init_weights",
    "layer_topk",
    "magnitude_masks",
    "magnitude_prune",
    "snip_masks",
    "snip_scores",
    "mask_methods",
    "oneshot_imp",
    "oneshot_masks",
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
