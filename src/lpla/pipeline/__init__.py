"""The audit pipeline: query encoders -> run attacks -> write the run, in one place.

``lpla attack``, ``lpla audit`` and ``lpla study`` are thin callers of it:

- :mod:`~lpla.pipeline.settings`: every query and attack default, set once;
- :mod:`~lpla.pipeline.answers`: an encoder's answers as a named collection of embeddings files;
- :mod:`~lpla.pipeline.querying`: encoders x roles -> answers (with cached stages);
- :mod:`~lpla.pipeline.attacking`: answers -> attack scores and metrics (and behind defenses);
- :mod:`~lpla.pipeline.writing`: results.json, scores, norms, report; nothing left on failure;
- :mod:`~lpla.pipeline.given`: the whole path for encoders or embeddings the user brings.
"""

from lpla.pipeline.answers import CANDIDATES, EncoderAnswers
from lpla.pipeline.attacking import AttackRun, run_attacks, run_defended
from lpla.pipeline.given import GivenInputs, open_answers, run_given
from lpla.pipeline.querying import EncoderPlan, plan_checkpoint, plan_split, query_encoders
from lpla.pipeline.settings import AttackSettings, QuerySettings, settings_from
from lpla.pipeline.stages import StageCache
from lpla.pipeline.writing import current_command, run_directory, write_run

__all__ = [
    "CANDIDATES",
    "AttackRun",
    "AttackSettings",
    "EncoderAnswers",
    "EncoderPlan",
    "GivenInputs",
    "QuerySettings",
    "StageCache",
    "current_command",
    "open_answers",
    "plan_checkpoint",
    "plan_split",
    "query_encoders",
    "run_attacks",
    "run_defended",
    "run_directory",
    "run_given",
    "settings_from",
    "write_run",
]
