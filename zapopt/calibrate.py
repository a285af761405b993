"""Run the original model once over calibration data and keep each layer's activation.

Predictors are trained, and thresholds chosen, on the true post-ReLU output feature maps
(ofms) of the ORIGINAL model. Holding every layer's ofm for every image in RAM does not
scale (a VGG-style model with 1,024 images at 64x64 needs tens of GB), so this module
streams: one onnxruntime session with the selected activations added as extra graph
outputs, one batch at a time, each layer's ofm appended as float32 to its own file on
disk and read back through ``np.memmap``. Peak memory is one batch of activations.
float32 (not float16) because thresholds live near zero, where half precision rounds.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from zapopt.errors import ZapoptError
from zapopt.graph.loading import load_model
from zapopt.progress import progress_bar
from zapopt.runtime import fixed_batch_size, run_batch

__all__ = ["CalibrationStore", "calibrate", "layer_outputs"]


@dataclass(frozen=True)
class _StoredArray:
    """One on-disk float32 array being filled batch by batch along axis 0."""

    path: Path
    item_shape: tuple[int, ...]


class CalibrationStore:
    """Per-layer ofms and the original model outputs, memory-mapped from a temp dir.

    Use it as a context manager (or call :meth:`close`): leaving deletes the directory.
    Arrays returned by :meth:`layer_array` are read-only memmaps and become invalid after
    closing.
    """

    def __init__(
        self,
        directory: Path,
        layer_tensors: Mapping[str, str],
        layers: Mapping[str, _StoredArray],
        outputs: Mapping[str, _StoredArray],
        num_images: int,
    ) -> None:
        self._directory = directory
        self._layer_tensors = dict(layer_tensors)
        self._layers = dict(layers)
        self._outputs = dict(outputs)
        self._num_images = num_images
        self._closed = False

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def num_images(self) -> int:
        return self._num_images

    @property
    def layer_names(self) -> list[str]:
        """Conv node names, in the order they were requested."""
        return list(self._layers)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def tensor_name(self, conv_name: str) -> str:
        """The activation tensor recorded for ``conv_name``."""
        self._check_layer(conv_name)
        return self._layer_tensors[conv_name]

    def layer_shape(self, conv_name: str) -> tuple[int, ...]:
        self._check_layer(conv_name)
        return (self._num_images, *self._layers[conv_name].item_shape)

    def layer_array(self, conv_name: str) -> np.memmap:
        """The layer's ofm for every calibration image, ``[N, C, H, W]`` float32, read-only."""
        self._check_layer(conv_name)
        return self._open(self._layers[conv_name])

    def output_array(self, name: str | None = None) -> np.ndarray:
        """An output of the original model (default: its first, usually the logits)."""
        self._check_open()
        if name is None:
            name = next(iter(self._outputs))
        if name not in self._outputs:
            raise ZapoptError(
                f"model output {name!r} was not recorded; recorded: {', '.join(self._outputs)}"
            )
        return self._open(self._outputs[name])

    @property
    def logits(self) -> np.ndarray:
        """The original model's first output for every calibration image."""
        return self.output_array(None)

    def close(self) -> None:
        """Delete the temporary directory and everything in it."""
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> CalibrationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer during shutdown
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise ZapoptError("this calibration store was closed; its arrays are gone")

    def _check_layer(self, conv_name: str) -> None:
        self._check_open()
        if conv_name not in self._layers:
            raise ZapoptError(
                f"layer {conv_name!r} was not calibrated; calibrated layers: "
                f"{', '.join(self._layers) or '(none)'}"
            )

    def _open(self, stored: _StoredArray) -> np.memmap:
        shape = (self._num_images, *stored.item_shape)
        if self._num_images == 0:
            return np.zeros(shape, dtype=np.float32)  # type: ignore[return-value]
        return np.memmap(stored.path, dtype=np.float32, mode="r", shape=shape)


def layer_outputs(layers: Mapping[str, str] | Sequence[Any]) -> dict[str, str]:
    """Normalize the layer selection to ``{conv_name: activation_tensor_name}``.

    Accepts a mapping, or records with ``.conv`` and ``.output`` (``ConvActivation``).
    """
    if isinstance(layers, Mapping):
        selected = {str(k): str(v) for k, v in layers.items()}
    else:
        selected = {}
        for record in layers:
            conv = getattr(record, "conv", None)
            output = getattr(record, "output", None)
            if conv is None:
                raise TypeError(
                    f"expected ConvActivation-like records with .conv and .output, got {record!r}"
                )
            if not output:
                raise ZapoptError(
                    f"layer {conv!r} has no activation output to calibrate "
                    f"({getattr(record, 'reason', 'not eligible')})"
                )
            selected[str(conv)] = str(output)
    if not selected:
        raise ZapoptError("no layers selected for calibration")
    return selected


def _with_extra_outputs(model: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """Expose intermediate tensors as graph outputs (on the caller's copy)."""
    graph = model.graph
    existing = {o.name for o in graph.output}
    produced = {name for node in graph.node for name in node.output}
    for name in tensors:
        if name in existing:
            continue
        if name not in produced:
            raise ZapoptError(
                f"tensor {name!r} is not produced by any node of the model; "
                "pick layer outputs from `zapopt info`"
            )
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        existing.add(name)
    return model


def _session(model: onnx.ModelProto, intra_op_threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ZapoptError(f"onnxruntime cannot load the model: {exc}") from exc


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise ZapoptError(
            f"{what} contains NaN or Inf; check the input preprocessing and the model weights"
        )


def calibrate(
    model: onnx.ModelProto | str | os.PathLike[str],
    layers: Mapping[str, str] | Sequence[Any],
    batches: Iterable[np.ndarray],
    *,
    input_name: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    total_images: int | None = None,
    max_images: int | None = None,
    intra_op_threads: int | None = None,
    progress: bool | None = None,
) -> CalibrationStore:
    """Run the original model over ``batches`` and record the selected activations.

    ``layers`` maps each conv node name to its activation tensor (or is a list of
    ``ConvActivation`` records). ``batches`` yields float32 ``[n, ...]`` input arrays.
    Files go to a new temp dir (inside ``workdir`` if given), deleted when the returned
    store closes. ``max_images`` stops early; ``total_images`` only sizes the progress bar.
    The input model (proto or file) is never modified.
    """
    selected = layer_outputs(layers)
    if max_images is not None and max_images <= 0:
        raise ZapoptError(f"max_images must be positive, got {max_images}")
    proto = load_model(model)
    if proto is model:  # outputs are added to a copy: the caller's model is never modified
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    proto = _with_extra_outputs(proto, selected.values())
    session = _session(proto, intra_op_threads)
    initializers = {init.name for init in proto.graph.initializer}
    feeds = [i for i in session.get_inputs() if i.name not in initializers]
    if input_name is None:
        if len(feeds) != 1:
            raise ZapoptError(
                f"the model has {len(feeds)} inputs ({', '.join(i.name for i in feeds)}); "
                "say which one the calibration data feeds with input_name"
            )
        input_name = feeds[0].name
    elif input_name not in {i.name for i in feeds}:
        raise ZapoptError(
            f"model has no input {input_name!r}; inputs: {', '.join(i.name for i in feeds)}"
        )
    expected_rank = len(next(i for i in feeds if i.name == input_name).shape)
    fixed = fixed_batch_size(session)  # a fixed-batch model gets padded batches of its size
    original_outputs = [o.name for o in session.get_outputs() if o.name not in selected.values()]
    # A layer tensor that is also an original output is still fetched once.
    fetch = list(dict.fromkeys([*selected.values(), *original_outputs]))

    directory = Path(tempfile.mkdtemp(prefix="zapopt-calib-", dir=workdir))
    files: dict[str, Any] = {}
    stored: dict[str, _StoredArray] = {}
    count = 0
    bar_total = total_images
    if max_images is not None:
        bar_total = min(bar_total or max_images, max_images)
    bar = progress_bar(bar_total, "calibrate", "img", progress)
    try:
        for batch in batches:
            if max_images is not None and count >= max_images:
                break
            batch = np.asarray(batch)
            if batch.dtype != np.float32:
                if not np.issubdtype(batch.dtype, np.floating):
                    raise ZapoptError(
                        f"calibration batches must be float arrays, got dtype {batch.dtype}"
                    )
                batch = batch.astype(np.float32)
            if batch.ndim != expected_rank:
                raise ZapoptError(
                    f"calibration batch has shape {batch.shape} but input {input_name!r} "
                    f"expects rank {expected_rank}"
                )
            if max_images is not None:
                batch = batch[: max_images - count]
            if batch.shape[0] == 0:
                continue
            _check_finite(batch, "a calibration input batch")
            try:
                results = run_batch(session, input_name, batch, fetch, fixed)
            except Exception as exc:  # onnxruntime's errors are not ValueError subclasses
                raise ZapoptError(f"onnxruntime failed on a calibration batch: {exc}") from exc
            by_name = dict(zip(fetch, results))
            for key, tensor, what in (
                *((f"layer:{c}", t, f"the activation of layer {c!r}") for c, t in selected.items()),
                *((f"output:{o}", o, f"model output {o!r}") for o in original_outputs),
            ):
                value = np.ascontiguousarray(by_name[tensor], dtype=np.float32)
                if value.shape[0] != batch.shape[0]:
                    raise ZapoptError(
                        f"{what} has batch size {value.shape[0]} for an input batch of "
                        f"{batch.shape[0]}; calibration needs batch-first tensors"
                    )
                if key.startswith("layer:"):
                    if value.ndim != 4:
                        raise ZapoptError(
                            f"{what} has shape {value.shape}; ZAP layers need [N, C, H, W]"
                        )
                    _check_finite(value, what)
                if key not in files:
                    path = directory / f"{len(files):04d}.f32"
                    files[key] = open(path, "wb")  # noqa: SIM115 - closed in finally
                    stored[key] = _StoredArray(path, tuple(value.shape[1:]))
                elif stored[key].item_shape != value.shape[1:]:
                    raise ZapoptError(
                        f"{what} changed shape from {stored[key].item_shape} to "
                        f"{value.shape[1:]} between batches; use one input size"
                    )
                files[key].write(memoryview(value).cast("B"))  # no extra copy
            for handle in files.values():
                handle.flush()  # hand each batch to the OS now; memory never accumulates
            count += batch.shape[0]
            bar.update(batch.shape[0])
    except BaseException:
        for handle in files.values():
            handle.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        bar.close()
    for handle in files.values():
        handle.close()
    if count == 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise ZapoptError("the calibration data yielded no images")
    return CalibrationStore(
        directory,
        selected,
        {c: stored[f"layer:{c}"] for c in selected},
        {o: stored[f"output:{o}"] for o in original_outputs},
        count,
    )
