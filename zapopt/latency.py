"""Latency-aware selection: keep a native layer only where it makes this machine faster.

Three steps, all measured on the machine ``optimize`` runs on:

1. per layer: the native node vs the stock nodes it replaces, each alone in a small model,
   on a batch-1 calibration input; a layer whose native op is not at least
   ``MIN_LAYER_SPEEDUP`` faster keeps its stock nodes;
2. in context: a profile of the model with the remaining native layers against the
   original's (median run per node). Inside a model a layer runs with other caches than
   alone (a deep layer's weights come from L3 or memory), and where onnxruntime had put its
   neighbours in the NCHWc layout, layout reorders appear around a custom node. A layer
   whose native time plus its reorders is not below its stock time in the original's
   profile goes back; the others are ranked by that in-context saving;
3. end to end, at every batch size and thread count asked for: the candidate model and the
   original, same inputs, runs paired and alternated. The candidate is kept only when a
   95 % lower confidence bound on the median of its paired speed-ups (original time /
   candidate time) is above 1.0 at every setting (a tie is not a win); else the weaker half
   of its native layers goes back and it is measured again, for at most ``max_rounds``
   rounds. When no round passes, the written model is the original graph: no native node,
   never slower.

The decision logic (:func:`select_by_latency`) takes the measurements as arguments, so it is
tested with injected timings; :mod:`zapopt.latency_timer` holds the real measurements.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zapopt.errors import ZapoptError
from zapopt.timing import Spread, Timings, clock_for, median_lower_bound

#: A layer must time at least this much faster native to be kept: on a shared machine single
#: medians move by several percent, and a layer "faster" by less is as likely slower
#: (OpenNSFW's selection once measured 1.006x end to end, then 0.85x in zapopt bench).
MIN_LAYER_SPEEDUP = 1.05
#: Confidence of the end-to-end lower bound that must reach 1.0.
END_TO_END_CONFIDENCE = 0.95
#: End-to-end rounds (candidate sets measured) before falling back to the original graph.
MAX_ROUNDS = 4
#: The ``optimize`` default: batch 1 at onnxruntime's default thread count.
DEFAULT_BATCHES: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class LatencySetting:
    """One batch size and thread count the end-to-end check must hold at."""

    batch: int
    threads: int | None  # None: onnxruntime's default

    @property
    def label(self) -> str:
        threads = "onnxruntime's default threads" if self.threads is None else \
            f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"batch {self.batch}, {threads}"

    @property
    def clock(self) -> str:
        return clock_for(self.threads)[0]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "threads": self.threads, "clock": self.clock}


def _positive_ints(values: int | Sequence[int] | None, what: str) -> tuple[int, ...]:
    items = () if values is None else (values,) if isinstance(values, int) else tuple(values)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ZapoptError(f"{what} must be positive integers, got {values!r}")
    return tuple(dict.fromkeys(items))


def latency_settings(batches: int | Sequence[int] | None = DEFAULT_BATCHES,
                     threads: int | Sequence[int] | None = None) -> tuple[LatencySetting, ...]:
    """Every (batch, threads) pair of ``batches`` x ``threads``, cheapest first; ``threads``
    None or empty: onnxruntime's default count."""
    batch_sizes = _positive_ints(batches, "latency batch sizes") or DEFAULT_BATCHES
    counts: tuple[int | None, ...] = _positive_ints(threads, "latency thread counts") or (None,)
    return tuple(LatencySetting(b, t) for b in sorted(batch_sizes) for t in counts)


#: Paired runs of one layer alone: its native node ("native") and the stock nodes it replaces ("stock").
LayerTimer = Callable[[str], Timings]
#: Paired runs of the model with these native layers ("model") and of the original
#: ("original") at one setting.
ModelTimer = Callable[[frozenset[str], LatencySetting], Timings]


@dataclass(frozen=True)
class LayerCost:
    """One native layer inside a whole model (onnxruntime's profile, milliseconds)."""

    native_ms: float
    stock_ms: float | None  # the stock nodes it replaced, in the original model's profile
    reorder_ms: float  # layout reorders next to it that the original does not have

    @property
    def saving_ms(self) -> float:
        """What keeping it native saves in the model (negative: it costs)."""
        return -math.inf if self.stock_ms is None else self.stock_ms - self.native_ms - self.reorder_ms

    def to_dict(self) -> dict[str, Any]:
        return {"native_ms": self.native_ms, "stock_ms": self.stock_ms, "reorder_ms": self.reorder_ms,
                "saving_ms": None if self.stock_ms is None else self.saving_ms}


#: In-context costs of the native layers of the model with these native layers.
LayerCoster = Callable[[frozenset[str]], Mapping[str, LayerCost]]


@dataclass(frozen=True)
class LayerDecision:
    name: str
    op: str  # ZapConv or ZeroSkipConv
    native_ms: float | None  # medians of paired runs, the layer alone
    stock_ms: float | None
    native: bool  # kept as the native op in the written model
    reason: str
    in_model: LayerCost | None = None  # its last in-context profile
    speedup_spread: Spread | None = None  # stock / native, per paired run

    @property
    def speedup(self) -> float | None:
        if not self.native_ms or self.stock_ms is None:
            return None
        return self.stock_ms / self.native_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "native_ms": self.native_ms, "stock_ms": self.stock_ms,
                "speedup": self.speedup, "native": self.native, "reason": self.reason,
                "speedup_spread": None if self.speedup_spread is None else self.speedup_spread.to_dict(),
                "in_model": None if self.in_model is None else self.in_model.to_dict()}


@dataclass(frozen=True)
class ModelCheck:
    """One end-to-end comparison of a candidate model with the original at one setting."""

    round: int
    native_layers: int
    setting: LatencySetting
    model_ms: Spread
    original_ms: Spread
    speedup: Spread  # original / candidate, per paired round
    lower_bound: float | None  # END_TO_END_CONFIDENCE lower bound on the median speed-up

    @property
    def passed(self) -> bool:
        return self.lower_bound is not None and self.lower_bound > 1.0

    @classmethod
    def of(cls, round_: int, native_layers: int, setting: LatencySetting, timings: Timings) -> ModelCheck:
        ratios = timings.ratios("original", "model")
        return cls(round_, native_layers, setting, Spread.of([1e3 * t for t in timings.samples["model"]]),
                   Spread.of([1e3 * t for t in timings.samples["original"]]), Spread.of(ratios),
                   median_lower_bound(ratios, END_TO_END_CONFIDENCE))

    @property
    def text(self) -> str:
        bound = "-" if self.lower_bound is None else f"{self.lower_bound:.3f}x"
        return (f"end to end {self.speedup.median:.3f}x (IQR {self.speedup.q1:.3f}-{self.speedup.q3:.3f}, "
                f"{END_TO_END_CONFIDENCE:.0%} lower bound {bound}) at {self.setting.label}")

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "native_layers": self.native_layers, **self.setting.to_dict(),
                "model_ms": self.model_ms.to_dict(), "original_ms": self.original_ms.to_dict(),
                "speedup": self.speedup.to_dict(), "lower_bound": self.lower_bound,
                "confidence": END_TO_END_CONFIDENCE, "passed": self.passed}


#: The note of a ZAP-mode report whose exact form (zapopt.model_building.faster_of) measured
#: faster and was written instead.
EXACT_FALLBACK_NOTE = ("the exact form (ZeroSkipConv on the Convs that pay, outputs equal to the original's) "
                       "measured faster end to end than the ZAP form, so it was written; the ZAP thresholds are "
                       "not used")


@dataclass(frozen=True)
class LatencyReport:
    """Every latency decision with the times behind it; ``measured`` is False when no
    timing ran (``--no-latency-check`` or no native library), with ``note`` saying why."""

    measured: bool
    layers: list[LayerDecision] = field(default_factory=list)
    model_checks: list[ModelCheck] = field(default_factory=list)
    note: str = ""
    settings: tuple[LatencySetting, ...] = ()
    exact_form_written: bool = False  # ZAP mode wrote the exact form, which measured faster

    @property
    def native_layers(self) -> list[str]:
        return [d.name for d in self.layers if d.native]

    @property
    def deciding_checks(self) -> list[ModelCheck]:
        """The checks of the round whose candidate was kept (none when the original was)."""
        if not self.native_layers or not self.model_checks:
            return []
        last = self.model_checks[-1].round
        return [c for c in self.model_checks if c.round == last]

    def summary(self) -> str:
        """One line for the command line: what was kept and how fast it measured."""
        if not self.measured:
            return f"speed unmeasured: {self.note}"
        return self._kept_line() + self._zap_hint()

    def _zap_hint(self) -> str:
        """When ZAP mode wrote the exact form because it measured faster."""
        if self.exact_form_written:
            return "; the exact form measured faster than ZAP's and was written (ZeroSkipConv, the original outputs)"
        return ""

    def _kept_line(self) -> str:
        if not self.native_layers:
            line = "no native layer pays on this machine: the output equals the original"
            passed = [c.setting for c in self.model_checks if c.passed]
            never = list(dict.fromkeys(c.setting for c in self.model_checks if c.setting not in passed))
            if passed and never:  # e.g. faster on one thread, too noisy or slower on two
                line += (f" (a candidate was surely faster at {'; '.join(dict.fromkeys(s.label for s in passed))} "
                         f"but never at {'; '.join(s.label for s in never)}; ask --latency-batch and "
                         "--latency-threads only for the settings you deploy with)")
            return line
        candidates = len({d.name for d in self.layers})  # a layer checked as ZapConv and then as ZeroSkipConv is one
        kept = f"kept {len(self.native_layers)} of {candidates} native layers"
        checks = self.deciding_checks
        return kept + (": " + "; ".join(c.text for c in checks) if checks else "")

    def to_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "note": self.note, "exact_form_written": self.exact_form_written,
                "summary": self.summary(),
                "settings": [s.to_dict() for s in self.settings],
                "min_layer_speedup": MIN_LAYER_SPEEDUP, "confidence": END_TO_END_CONFIDENCE,
                "layers": [d.to_dict() for d in self.layers], "model_checks": [c.to_dict() for c in self.model_checks]}

    def format_table(self) -> str:
        from zapopt.report import format_rows

        if not self.measured:
            return f"latency: not measured ({self.note})"

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        def spread(value: Spread | None) -> str:
            return "-" if value is None else f"{value.q1:.2f}-{value.q3:.2f}"

        rows = [(d.name, d.op, ms(d.native_ms), ms(d.stock_ms),
                 "-" if d.speedup is None else f"{d.speedup:.2f}x", spread(d.speedup_spread),
                 "-" if d.in_model is None or d.in_model.stock_ms is None else f"{d.in_model.saving_ms:+.3f}",
                 "native" if d.native else "stock", d.reason)
                for d in self.layers]
        lines = ["latency-aware selection (per layer: batch 1, median of alternated runs; in model: saving in "
                 "the whole model's profile, reorders included):",
                 format_rows(("layer", "op", "native ms", "stock ms", "speedup", "IQR", "in model ms", "written as",
                              "why"), rows)]
        if self.model_checks:
            check_rows = [(c.round, c.native_layers, c.setting.label, f"{c.original_ms.median:.3f}",
                           f"{c.model_ms.median:.3f}", f"{c.speedup.median:.3f}x",
                           f"{c.speedup.q1:.3f}-{c.speedup.q3:.3f}",
                           "-" if c.lower_bound is None else f"{c.lower_bound:.3f}x", "yes" if c.passed else "no")
                          for c in self.model_checks]
            lines += ["", "end to end (paired alternated runs, original / candidate; 1 thread: thread CPU time, "
                      "else wall time):",
                      format_rows(("round", "native layers", "setting", "original ms", "candidate ms", "speed-up",
                                   "IQR", f"{END_TO_END_CONFIDENCE:.0%} lower bound", "passed"), check_rows)]
        if self.note:
            lines.append(f"note: {self.note}")
        lines.append(self.summary())
        return "\n".join(lines)


def select_by_latency(candidates: Mapping[str, str], time_layer: LayerTimer, time_model: ModelTimer, *,
                      settings: Sequence[LatencySetting] = (LatencySetting(1, None),),
                      layer_costs: LayerCoster | None = None, max_rounds: int = MAX_ROUNDS,
                      note: str = "") -> LatencyReport:
    """Decide which ``candidates`` (``{layer: op type}``) stay native (see the module text).

    ``time_layer``: a layer alone; ``layer_costs`` (optional): the native layers' in-context
    costs in a model; ``time_model``: paired runs of a candidate model and the original.
    """
    if not settings:
        raise ZapoptError("the end-to-end latency check needs at least one batch size and thread count")
    if max_rounds < 1:
        raise ZapoptError(f"max_rounds must be >= 1, got {max_rounds}")
    alone = {name: time_layer(name) for name in candidates}
    timed = {name: (t.median("native"), t.median("stock")) for name, t in alone.items()}
    reasons = _not_faster_alone(timed)
    kept = [name for name in candidates if name not in reasons]
    in_model: dict[str, LayerCost] = {}
    checks: list[ModelCheck] = []
    accepted = False
    for round_ in range(1, max_rounds + 1):
        if not kept:
            break
        saving = {name: 1e3 * (timed[name][1] - timed[name][0]) for name in kept}  # alone, ms
        if layer_costs is not None:
            costs = {name: cost for name, cost in layer_costs(frozenset(kept)).items() if name in saving}
            in_model.update(costs)
            reasons.update(_costly_in_the_model(costs))
            kept = [name for name in kept if name not in reasons]
            saving.update({name: cost.saving_ms for name, cost in costs.items()})
            if not kept:
                break
        ranked = sorted(kept, key=lambda name: -saving[name])  # most profitable first
        round_checks = []
        for setting in settings:
            round_checks.append(ModelCheck.of(round_, len(ranked), setting, time_model(frozenset(ranked), setting)))
            if not round_checks[-1].passed:
                break
        checks += round_checks
        if round_checks[-1].passed:
            accepted = True
            break
        failed, kept = round_checks[-1], ranked
        if round_ == max_rounds or len(ranked) == 1:
            break
        kept = ranked[: len(ranked) // 2]
        for name in ranked[len(kept):]:
            reasons[name] = (f"dropped in round {round_} (weaker half): the model with {len(ranked)} native layers "
                             f"was not surely faster: {failed.text}")
    if not accepted:
        for name in kept:
            rounds = checks[-1].round if checks else 0
            reasons[name] = (f"no candidate model was surely faster end to end ({rounds} round{'s' * (rounds != 1)} "
                             "measured): the written model is the original graph")
        kept = []
    decisions = []
    for name, op in candidates.items():
        native_s, stock_s = timed[name]
        if name in kept:
            cost = in_model.get(name)
            reasons[name] = f"native {_times(stock_s, native_s)} faster alone" + (
                "" if cost is None or cost.stock_ms is None else f", saves {cost.saving_ms:.3f} ms in the model")
        decisions.append(LayerDecision(name, op, 1e3 * native_s, 1e3 * stock_s, name in kept, reasons[name],
                                       in_model.get(name), alone[name].ratio("stock", "native")))
    return LatencyReport(True, decisions, checks, note, tuple(settings))


def _times(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "infinitely"


def _not_faster_alone(timed: Mapping[str, tuple[float, float]]) -> dict[str, str]:
    """Why each layer that is not ``MIN_LAYER_SPEEDUP`` faster alone keeps its stock nodes."""
    reasons = {}
    for name, (native_s, stock_s) in timed.items():
        if native_s >= stock_s:
            reasons[name] = "stock nodes as fast or faster"
        elif native_s * MIN_LAYER_SPEEDUP >= stock_s:
            reasons[name] = (f"native only {_times(stock_s, native_s)} faster, within timing noise "
                             f"(< {MIN_LAYER_SPEEDUP}x)")
    return reasons


def _costly_in_the_model(costs: Mapping[str, LayerCost]) -> dict[str, str]:
    """Why each layer that saves nothing inside the whole model (its cost there, reorders) goes back."""
    return {name: (f"faster alone, but not in the model: native {cost.native_ms:.3f} ms + layout reorders "
                   f"{cost.reorder_ms:.3f} ms vs its stock nodes in the original model "
                   + ("(not found in the profile)" if cost.stock_ms is None else f"{cost.stock_ms:.3f} ms"))
            for name, cost in costs.items() if cost.saving_ms <= 0}


def unmeasured(candidates: Mapping[str, str], note: str) -> LatencyReport:
    """Every candidate kept native, speed not measured (the report says why)."""
    decisions = [LayerDecision(name, op, None, None, True, "not timed") for name, op in candidates.items()]
    return LatencyReport(False, decisions, [], note)


