"""``OptimizeConfig``: every knob of ``zapopt optimize``, validated on construction.

The command line takes its defaults and ranges from here (:func:`config_default` and the
``*_RANGE`` constants), so one change changes both.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from zapopt.data_checks import MIN_CALIBRATION_IMAGES
from zapopt.errors import ZapoptError
from zapopt.latency import DEFAULT_BATCHES, LatencySetting, latency_settings
from zapopt.pattern_choice import parse_patterns
from zapopt.predictor.inputs import PredictorInput
from zapopt.selection_modes import (
    SELECTION_MODES,
    ExactOnly,
    SelectionMode,
    UniformThreshold,
    check_flag,
    check_number,
    selection_text,
)

#: native: ZapConv + ZeroSkipConv nodes (zapopt's op library); zap: ZapConv nodes only;
#: onnx: the portable expansion (standard ops, no speed-up).
FORMATS = ("native", "zap", "onnx")
#: Without --threshold/--max-error/--max-drop, a position this likely to be nonzero sits at
#: the threshold (see :func:`default_threshold`).
DEFAULT_NONZERO_CHANCE = 0.1
#: ``--magnitude-weight``'s range (0 = the paper's plain MSE loss).
MAGNITUDE_WEIGHT_RANGE = (0, 1e6)
#: The pattern used when none is given.
DEFAULT_PATTERN = "checkerboard"


def default_threshold(magnitude_weight: float) -> float:
    """The uniform threshold used when none is given: the score an MSE-trained predictor
    gives a position that is nonzero with probability p = ``DEFAULT_NONZERO_CHANCE``.

    With the paper's plain MSE that score is p itself (0.1, the paper's working point).
    Weighting positives by 1 + w y / mean(y > 0) (mean 1 + w) moves the optimum to
    p (1 + w) / (1 + p w), e.g. 0.4375 for w = 6, so the default keeps its meaning.
    """
    p = DEFAULT_NONZERO_CHANCE
    return p * (1 + magnitude_weight) / (1 + p * magnitude_weight)


@dataclass(frozen=True)
class OptimizeConfig:
    """Every knob of ``zapopt optimize`` (validated on construction).

    ``selection`` is how thresholds are chosen: ``UniformThreshold`` (``--threshold``, the
    default), ``ErrorBudget`` (``--max-error``), ``AccuracyBudget`` (``--max-drop``) or
    ``ExactOnly`` (``--exact``), see ``zapopt.selection_modes``.
    """

    selection: SelectionMode = field(default_factory=UniformThreshold)
    pattern: str = DEFAULT_PATTERN  # a name, a comma-separated list or "auto": chosen per layer
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_first: bool = False
    calib_images: int = 1024
    holdout: float = 0.25  # share of calibration images kept out of training, for the curves
    eval_images: int | None = None
    epochs: int = 3  # on the largest layer; smaller maps get more, see max_epoch_scale
    max_epoch_scale: int = 8  # 1 = every layer trains for ``epochs``
    lr: float = 1e-2
    batch_size: int = 32  # images per onnxruntime batch (calibration)
    train_batch_size: int = 8  # images per predictor training step
    seed: int = 0
    output_format: str = "native"
    predictor_input: str = "preactivation"  # "activation" = the paper's predictor input
    magnitude_weight: float = 6.0  # 0 = the paper's plain MSE loss
    latency_check: bool = True  # keep a native layer only where it is faster on this machine
    # the end-to-end latency check must hold at every batch size x thread count (threads None: onnxruntime's default)
    latency_batch: int | tuple[int, ...] = DEFAULT_BATCHES
    latency_threads: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.selection, SELECTION_MODES):
            raise TypeError("selection must be one of UniformThreshold, ErrorBudget, AccuracyBudget, ExactOnly; "
                            f"got {self.selection!r}")
        patterns = parse_patterns(self.pattern)
        check_flag(self.latency_check, "latency_check")
        latency_settings(self.latency_batch, self.latency_threads)  # validates them
        if self.exact:
            if self.pattern != DEFAULT_PATTERN:
                raise ZapoptError("--exact trains no predictors, so it takes no --pattern; "
                                  "drop it, or leave out --exact for ZAP")
            if self.output_format == "zap":
                raise ZapoptError("--exact writes ZeroSkipConv nodes, not ZapConv: use --format native (the default) "
                                  "or --format onnx")
        if len(patterns) > 1 and not self.selection.per_layer:
            raise ZapoptError(f"choosing the pattern per layer ({self.pattern!r}) needs a per-layer budget: add "
                              "--max-error E or --max-drop X --eval DATA, or give a single --pattern")
        for name in ("lr", "holdout", "magnitude_weight"):
            check_number(getattr(self, name), name)
        low, high = MAGNITUDE_WEIGHT_RANGE
        if not low <= self.magnitude_weight <= high:
            raise ZapoptError(f"--magnitude-weight must be in [{low:g}, {high:g}], got {self.magnitude_weight}")
        if not 0 < self.holdout < 1:
            raise ZapoptError(f"holdout must be in (0, 1), got {self.holdout}")
        for name in ("calib_images", "epochs", "max_epoch_scale", "batch_size", "train_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ZapoptError(f"{name} must be a positive integer, got {value!r}")
        if self.calib_images < MIN_CALIBRATION_IMAGES:
            raise ZapoptError(f"use at least {MIN_CALIBRATION_IMAGES} calibration images (more is better: 256-1024)")
        PredictorInput(self.predictor_input)  # validates the name
        if self.output_format not in FORMATS:
            raise ZapoptError(f"unknown format {self.output_format!r}; choose one of {', '.join(FORMATS)}")

    @property
    def patterns(self) -> tuple[str, ...]:
        """The candidate patterns (one, or several to choose from per layer)."""
        return parse_patterns(self.pattern)

    @property
    def exact(self) -> bool:
        """``--exact``: no predictors, only ZeroSkipConv."""
        return isinstance(self.selection, ExactOnly)

    @property
    def selection_text(self) -> str:
        return selection_text(self.selection, self.uniform_threshold)

    @property
    def uniform_threshold(self) -> float:
        """The ``UniformThreshold``'s tau, or the default one for this ``magnitude_weight``."""
        tau = self.selection.tau if isinstance(self.selection, UniformThreshold) else None
        return default_threshold(self.magnitude_weight) if tau is None else float(tau)

    @property
    def checks_latency(self) -> bool:
        """Whether native layers are timed: asked for, and the output keeps native ops."""
        return self.latency_check and self.output_format != "onnx"

    @property
    def latency_points(self) -> tuple[LatencySetting, ...]:
        """Every (batch, threads) the end-to-end latency check must hold at."""
        return latency_settings(self.latency_batch, self.latency_threads)


def config_default(name: str) -> object:
    """``OptimizeConfig``'s default for field ``name`` (what the CLI shows and uses)."""
    for f in fields(OptimizeConfig):
        if f.name == name:
            if f.default is MISSING:
                raise ZapoptError(f"internal: OptimizeConfig.{name} has no plain default")
            return f.default
    raise ZapoptError(f"internal: OptimizeConfig has no field {name!r}")
