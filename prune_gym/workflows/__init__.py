"""The workflows: what the ``prune-gym`` commands run, above the library (envs, agents, tasks,
export), which never imports them.

- ``compare.compare`` (``prune-gym compare``): an agent against every allocation rule and the
  search at equal cost, at matched targets, from one resolved :class:`Experiment`
  (``experiment.py``; ``methods.py`` is what it plays, ``agents/report.py`` how it reports).
- :func:`sweep` / :func:`resume_sweep` (``sweeps.py``, ``prune-gym sweep``): the comparison over
  algorithms and seeds as Ray Tune trials, aggregated (``sweep_trial.py``, ``sweep_report.py``;
  the ``[ray]`` extra is needed only when called).
- ``validate.validate`` (``prune-gym validate``): replays what a comparison or sweep recorded.
- ``export_task.export_task`` (``prune-gym export`` for a weight env's task) and
  ``pretrain.pretrain`` (``prune-gym pretrain``).

Only names that are not also module names are re-exported here, so ``prune_gym.workflows.compare``
stays the module.
"""

from prune_gym.workflows.experiment import Experiment
from prune_gym.workflows.sweeps import resume_sweep, sweep

__all__ = ["Experiment", "resume_sweep", "sweep"]
