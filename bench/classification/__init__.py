"""Few-shot defect-type classification, the harness's first task (docs/method-notes.md §2): n labelled shots per
defect type, the queries classified, accuracy.

    from bench.classification import get_method, make_episode
    ep = make_episode(samples, "screw", shots=5, seed=1, protocol="paper")  # support and queries
    spec = get_method("protonet")                                           # registered in methods/

The task's package beside :mod:`bench.detection` and :mod:`bench.discovery`: its pieces live where the by-stage
layout puts them and are named here. The method contract and registry are :mod:`bench.method` (``Method``,
``register_method``; what every kind shares is ``MethodBase``), the protocols and episodes :mod:`bench.episodes`,
the metrics of one episode :mod:`bench.metrics`; the jobs run through :mod:`bench.run.classification` (its job core
inside the one job skeleton), the report sections are :func:`bench.report.tables.classification_sections`,
:func:`bench.report.leaderboard.classification_sections` and :func:`bench.report.summary.classification_blocks`;
the record naming all of them is the ``classification`` line of :data:`bench.tasks.BUILTIN`. The methods live in
``methods/`` (installed as ``bench.methods``).
"""

from bench.episodes import Episode, make_episode
from bench.method import METHODS, Method, SupportSet, get_method, register_method
from bench.metrics import episode_metrics

__all__ = ["METHODS", "Episode", "Method", "SupportSet", "episode_metrics", "get_method", "make_episode", "register_method"]
