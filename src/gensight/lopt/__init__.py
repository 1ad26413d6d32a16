"""Learned optimizers on weight space (issue #19): per-parameter MLP, Deep Sets, NFN and UNF
learned optimizers (UNF paper, Zhou, Finn, Harrison, arXiv 2402.05232, Sec. 4), meta-trained
by truncated backpropagation or antithetic (persistent) evolution strategies on a population
of small inner tasks.

Only light modules are imported here; tasks load their data on first use.
"""

from gensight.lopt.errors import LoptError
from gensight.lopt.meta import MetaConfig, MetaTrainer, antithetic_es_gradient, load_lopt
from gensight.lopt.nets import KINDS, make_f
from gensight.lopt.optimizer import LearnedOptimizer, LOpt, LOptConfig
from gensight.lopt.tasks import TASKS, Task, make_task

__all__ = [
    "antithetic_es_gradient",
    "KINDS",
    "LearnedOptimizer",
    "LOpt",
    "LOptConfig",
    "LoptError",
    "load_lopt",
    "MetaConfig",
    "MetaTrainer",
    "TASKS",
    "Task",
    "make_f",
    "make_task",
]
