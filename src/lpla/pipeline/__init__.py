"""The audit pipeline: query encoders -> run attacks -> write the run, in one place.

``lpla attack``, ``lpla audit`` and ``lpla study`` are thin callers of it:

- :mod:`~lpla.pipeline.settings`: every query and attack default, set once;
- :mod:`~lpla.pipeline.answers`: an encoder's answers as a named collection of embeddings files;
- :mod:`~lpla.pipeline.querying`: encoders x roles -> answers (with cached stages);
- :mod:`~lpla.pipeline.attacking`: answers -> attack scores and metrics (and behind defenses);
- :mod:`~lpla.pipeline.writing`: results.json, scores, norms, report; nothing left on failure;
- :mod:`~lpla.pipeline.given`: the whole path for encoders or embeddings the user brings;
- :mod:`~lpla.pipeline.own`: the whole path for an encoder of the user's on their own images.
"""

from lpla.pipeline.answers import CANDIDATES, EncoderAnswers
from lpla.pipeline.attacking import AttackRun, run_attacks, run_defended
from lpla.pipeline.given import GivenInputs, open_answers, run_given
from lpla.pipeline.own import OwnEncoder, OwnInputs, run_own
from lpla.pipeline.querying import (
    EncoderPlan,
    EncoderRef,
    ImageSource,
    plan_checkpoint,
    plan_images,
    plan_split,
    query_encoders,
    reference_cut,
)
from lpla.pipeline.settings import AttackSettings, QuerySettings, settings_from
from lpla.pipeline.stages import StageCache
from lpla.pipeline.writing import current_command, run_directory, write_run

__all__ = [
    "CANDIDATES",
    "AttackRun",
    "AttackSettings",
    "EncoderAnswers",
    "EncoderPlan",
    "EncoderRef",
    "GivenInputs",
    "ImageSource",
    "OwnEncoder",
    "OwnInputs",
    "QuerySettings",
    "StageCache",
    "current_command",
    "open_answers",
    "plan_checkpoint",
    "plan_images",
    "plan_split",
    "query_encoders",
    "reference_cut",
    "run_attacks",
    "run_defended",
    "run_directory",
    "run_given",
    "run_own",
    "settings_from",
    "write_run",
]
