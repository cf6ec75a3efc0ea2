"""Semi-supervised trainer (with its prepare_batch callables, student step and step guard), EMA teacher and
training handlers of the VQ-Seg bundle."""

from vqseg_bundle.engines.checkpoint import (
    BestMetricState,
    TrainerCheckpointLoader,
    TrainerCheckpointSaver,
    checkpoint_problem,
    latest_checkpoint,
    resume_path,
)
from vqseg_bundle.engines.ema import EMATeacher, ema_decay_at, make_teacher
from vqseg_bundle.engines.handlers import (
    CodebookUsageHandler,
    FinalValidation,
    NaNSkipLogger,
    NonFiniteLossError,
    ProgressBarHandler,
    TerminateOnNonFinite,
    output_dict,
    per_class_dice_metrics,
    scalar_output,
)
from vqseg_bundle.engines.loaders import InfiniteLoader
from vqseg_bundle.engines.model_saver import BestModelSaver, network_arguments, resolved_config
from vqseg_bundle.engines.optim import backbone_param_groups
from vqseg_bundle.engines.orientation_training import (
    fit_orientation_classifier,
    random_orientation_views,
    train_orientation_classifier,
    validate_orientation_classifier,
)
from vqseg_bundle.engines.precision import cpu_has_native_bf16, emulated_bf16_warning, resolve_switch
from vqseg_bundle.engines.prepare_batch import PrepareLabeledBatch, PrepareUnlabeledBatch
from vqseg_bundle.engines.step_guard import NAN_POLICIES, StepGuard
from vqseg_bundle.engines.student_step import SemiSupervisedForward, frozen_batchnorm_stats
from vqseg_bundle.engines.trainer import (
    CUTMIX_PARTNERS,
    PERTURBED_STREAMS,
    PSEUDO_LABELERS,
    STRONG_BN_STATS,
    SemiSupervisedTrainer,
)
from vqseg_bundle.engines.unwrap import unwrap_model

__all__ = [
    "fit_orientation_classifier",
    "random_orientation_views",
    "train_orientation_classifier",
    "validate_orientation_classifier",
    "BestMetricState",
    "BestModelSaver",
    "checkpoint_problem",
    "network_arguments",
    "resolved_config",
    "NonFiniteLossError",
    "TrainerCheckpointLoader",
    "TrainerCheckpointSaver",
    "backbone_param_groups",
    "TerminateOnNonFinite",
    "CodebookUsageHandler",
    "FinalValidation",
    "EMATeacher",
    "InfiniteLoader",
    "CUTMIX_PARTNERS",
    "NAN_POLICIES",
    "PERTURBED_STREAMS",
    "PSEUDO_LABELERS",
    "STRONG_BN_STATS",
    "frozen_batchnorm_stats",
    "NaNSkipLogger",
    "ProgressBarHandler",
    "SemiSupervisedForward",
    "SemiSupervisedTrainer",
    "ema_decay_at",
    "latest_checkpoint",
    "make_teacher",
    "per_class_dice_metrics",
    "resume_path",
    "scalar_output",
    "output_dict",
    "PrepareLabeledBatch",
    "PrepareUnlabeledBatch",
    "StepGuard",
    "cpu_has_native_bf16",
    "emulated_bf16_warning",
    "resolve_switch",
    "unwrap_model",
]
