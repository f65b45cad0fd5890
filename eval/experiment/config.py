"""The experiment's YAML schema: typed settings, loading, and the arms' validation.

Loading goes through :func:`teacher.core.config.load_config` (key=value overrides,
unknown keys named with a did-you-mean); the arms are a free mapping in YAML, so
their names and kinds are checked here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from teacher.core.config import ConfigError, did_you_mean, from_dict, load_config
from teacher.core.models import DEFAULT_STUDENT, DEFAULT_TEACHER
from teacher.core.records import MODES
from teacher.serving.engine import EngineSettings

SCHEMA = "distill.experiment/v1"
# The teacher-written kinds are the distillation modes (records.MODES, which a test
# keeps equal to the mode registry); the rest train on the references.
TEACHER_KINDS = tuple(mode for mode in MODES if mode != "ground_truth")
ARM_KINDS = ("ground_truth", "ground_truth_stm", *TEACHER_KINDS)
# Who writes each arm's data unless the arm says otherwise: traces come from the big
# teacher; rewrites and best-of-N are the student's own words (SDFT, self-output).
DEFAULT_GENERATOR = {"trace": "teacher", "rewrite": "student", "best_of_n": "student"}
STM_DEFAULT_PPL = 2.5


class ExperimentError(RuntimeError):
    """An experiment that cannot run as configured; the message says why."""


@dataclass
class TeacherSettings:
    """Where the teacher arms' data come from."""

    # HOST:PORT[,HOST:PORT...] of running teacher servers; "" = start one in-process
    # hosting ``models`` for the generate stage only.
    address: str = ""
    token_file: str | None = None
    # Served name -> catalogue name / path. "student" defaults to the experiment's student.
    models: dict = field(default_factory=lambda: {"teacher": DEFAULT_TEACHER})
    engine: str = ""  # in-process engine: "" = vllm where installed, else hf
    dtype: str = "auto"
    max_model_len: int = 2048
    engine_options: dict = field(default_factory=dict)
    concurrency: int = 8  # examples in flight per data job
    ready_timeout_s: float = 15.0  # how long an address may take to answer the health check

    def engine_settings(self) -> EngineSettings:
        """The in-process teacher's engine, as the one engine-settings type (the YAML
        keeps its flat ``engine``/``dtype``/``max_model_len``/``engine_options`` keys)."""
        return EngineSettings(name=self.engine, dtype=self.dtype,
                              max_model_len=self.max_model_len,
                              options=dict(self.engine_options))


@dataclass
class ArmSettings:
    """One arm: what its training data are. Training settings are shared."""

    kind: str = ""  # one of ARM_KINDS; "" = the arm's name
    generator: str = ""  # served model writing the data ("" = DEFAULT_GENERATOR[kind])
    scorer: str = "student"  # served model scoring candidates (best-of-N, perplexity)
    generate: dict = field(default_factory=dict)  # data-job settings: num_candidates, ...
    # key=value changes to the shared training config; the report flags such arms as
    # differing in more than their data.
    train: list[str] = field(default_factory=list)
    subset: list[float] = field(default_factory=list)  # e.g. [0.25, 0.5, 1.0]: a sweep


@dataclass
class EvalSettings:
    suite: str = "quick"  # a shipped suite name or a YAML path
    overrides: list[str] = field(default_factory=list)  # suite key=value, e.g. gsm8k.limit=10


@dataclass
class ExperimentConfig:
    name: str = ""
    task: str = "gsm8k"  # the target task (train split = the training examples)
    examples: int = 32  # N training examples of the task (the first N, or drawn: sample_seed)
    # The seed the N questions are drawn with (teacher.core.tasks.draw), the same for
    # every arm and training seed; None: the first N in file order (runs made before it).
    sample_seed: int | None = None
    # Every arm trains on the same questions: the teacher arms reject what they cannot
    # produce (fallback reject, unless an arm's generate sets fallback) and the questions
    # any teacher arm rejected are dropped from every arm (data/questions.json), so arms
    # differ in response text only. False: each arm trains on what its data job kept.
    same_questions: bool = False
    data_dir: str | None = None  # default: $DISTILL_DATA_DIR or ../shared/data, else the hub
    student: str = DEFAULT_STUDENT
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    arms: dict = field(default_factory=dict)  # name -> ArmSettings mapping (None = defaults)
    seeds: list[int] = field(default_factory=lambda: [42])  # training seeds: LoRA init, order
    # The validation split's seed, so which questions are trained: None = the first of
    # ``seeds`` for every run (seeds then differ in LoRA init and data order only); an
    # int; or "seed" = each run's own training seed (how runs were made before it).
    split_seed: int | str | None = None
    # The student job's config (student.config.TrainConfig) shared by every arm; the
    # experiment sets model, seed and the data source of each arm.
    train: dict = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    config = load_config(ExperimentConfig, path, overrides)
    if not config.name:
        config.name = Path(path).stem
    return config


def arm_settings(config: ExperimentConfig) -> dict[str, ArmSettings]:
    """Each arm's typed settings, its kind and generator filled in (raises ConfigError
    naming the arm)."""
    if not config.arms:
        raise ConfigError(f"arms: no arms; name some of {', '.join(ARM_KINDS)}")
    arms: dict[str, ArmSettings] = {}
    for name, raw in config.arms.items():
        arm = from_dict(ArmSettings, raw or {}, f"arms.{name}")
        arm.kind = arm.kind or str(name)
        if arm.kind not in ARM_KINDS:
            where = f"arms.{name}.kind" if raw and "kind" in raw else f"arms.{name}"
            hint = did_you_mean(arm.kind, ARM_KINDS)
            raise ConfigError(f"{where}: unknown arm kind {arm.kind!r}{hint} (kinds: "
                              f"{', '.join(ARM_KINDS)}; an arm of another name sets kind)")
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"arms.{name}: arm names are letters, digits, '_' and '-'")
        for share in arm.subset:
            if not isinstance(share, int | float) or not 0 < share <= 1:
                raise ConfigError(f"arms.{name}.subset: shares must be in (0, 1], got {share!r}")
        if arm.kind in TEACHER_KINDS:
            arm.generator = arm.generator or DEFAULT_GENERATOR[arm.kind]
        arms[str(name)] = arm
    return arms


def served_models(config: ExperimentConfig) -> dict[str, str]:
    """Name -> source of the models an in-process teacher hosts."""
    served = dict(config.teacher.models)
    served.setdefault("student", config.student)
    return served
