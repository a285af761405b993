"""open_dataset over arrays, .npy, .npz, idx and image folders, with every validation error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from zapopt.data import ImageOptions, ModelInput, model_input, open_dataset, write_idx
from zapopt.errors import ZapoptError

FMNIST_INPUT = ModelInput("x", (None, 1, 28, 28), np.float32)


def tiny_model(path: Path, inputs: list[tuple[str, int, list]], with_initializer_input: bool = False) -> Path:
    """An Identity model per input, saved to ``path``; dims may be ints or dim_param strings."""
    value_infos = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, s) for n, t, s in inputs]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    initializers = []
    if with_initializer_input:
        initializers.append(helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0]))
        value_infos.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "g", value_infos, outputs, initializer=initializers)
    onnx.save(helper.make_model(graph), str(path))
    return path


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def rgb_dir(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """Five 6x8 RGB images with distinct content; stored out of order and one in a subfolder."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8) for _ in range(5)]
    names = ["b.png", "a.png", "sub/c.bmp", "d.png", "e.png"]
    for name, pixels in zip(names, images):
        save_png(tmp_path / "imgs" / name, pixels)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    order = sorted(range(5), key=lambda i: names[i])
    return tmp_path / "imgs", [images[i] for i in order]


# --- model_input -------------------------------------------------------------------------

def test_model_input_reads_dims_dtype_and_skips_initializers(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "m.onnx", [("img", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                      with_initializer_input=True)
    info = model_input(path)
    assert info == ModelInput("img", (None, 1, 28, 28), np.dtype(np.float32))
    assert model_input(onnx.load(str(path))).shape == (None, 1, 28, 28)


def test_model_input_needs_a_name_when_several(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "m.onnx", [("a", TensorProto.FLOAT, [1, 3]), ("b", TensorProto.UINT8, [1, 3])])
    with pytest.raises(ZapoptError, match="'a', 'b'"):
        model_input(path)
    assert model_input(path, "b").dtype == np.uint8
    with pytest.raises(ZapoptError, match="no input 'c'"):
        model_input(path, "c")


def test_model_input_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ZapoptError, match="not found"):
        model_input(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00garbage")
    with pytest.raises(ZapoptError, match="not a readable ONNX model"):
        model_input(tmp_path / "junk.onnx")


# --- arrays, npy, npz, idx ---------------------------------------------------------------

def test_uint8_28x28_feeds_a_float_1x28x28_model_scaled_by_1_over_255(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = open_dataset(tmp_path / "x.npy", FMNIST_INPUT)
    batches = list(data.batches(4))
    assert [b.shape for b in batches] == [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)]
    assert all(b.dtype == np.float32 for b in batches)
    np.testing.assert_allclose(np.concatenate(batches)[:, 0], x / 255.0, rtol=1e-6)
    assert data.labels is None and len(data) == 10 and data.sample_shape == (1, 28, 28)


def test_uint8_with_byte_scale_keeps_0_to_255(tmp_path: Path) -> None:
    x = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    data = open_dataset((x, None), FMNIST_INPUT, ImageOptions(scale="byte", mean=(128.0,), std=(2.0,)))
    np.testing.assert_allclose(data.to_numpy()[:, 0], (x.astype(np.float32) - 128) / 2)


def test_nhwc_model_gets_channel_last(tmp_path: Path) -> None:
    x = np.zeros((3, 28, 28), dtype=np.uint8)
    data = open_dataset((x, None), ModelInput("x", (None, 28, 28, 1), np.float32))
    assert next(data.batches(3)).shape == (3, 28, 28, 1)


def test_npz_with_labels_and_take(tmp_path: Path) -> None:
    x = np.random.default_rng(2).random((7, 1, 28, 28), dtype=np.float32)
    y = np.arange(7, dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = open_dataset(tmp_path / "d.npz", FMNIST_INPUT)
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, y)
    first = data.take(3)
    assert len(first) == 3 and len(data) == 7
    np.testing.assert_array_equal(first.labels, y[:3])
    np.testing.assert_array_equal(first.to_numpy(), x[:3])
    assert len(data.take(100)) == 7
    with pytest.raises(ZapoptError, match="positive"):
        data.take(0)


def test_limit_keeps_the_first_samples(tmp_path: Path) -> None:
    x = np.random.default_rng(3).random((9, 1, 28, 28), dtype=np.float32)
    data = open_dataset((x, np.arange(9)), FMNIST_INPUT, limit=4)
    assert len(data) == 4
    np.testing.assert_array_equal(data.to_numpy(), x[:4])
    np.testing.assert_array_equal(data.labels, np.arange(4))
    with pytest.raises(ZapoptError, match="limit"):
        open_dataset((x, None), FMNIST_INPUT, limit=0)


def test_idx_file_source(tmp_path: Path) -> None:
    x = np.random.default_rng(4).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    np.testing.assert_allclose(open_dataset(path, FMNIST_INPUT).to_numpy()[:, 0], x / 255.0, rtol=1e-6)


def test_float64_is_cast_and_dynamic_dims_accept_anything(tmp_path: Path) -> None:
    x = np.random.default_rng(5).random((2, 3, 17, 9))
    data = open_dataset((x, None), ModelInput("x", (None, 3, None, None), np.float32))
    out = data.to_numpy()
    assert out.dtype == np.float32 and out.shape == (2, 3, 17, 9)


def test_integer_model_takes_safely_castable_ints() -> None:
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    data = open_dataset((x, None), ModelInput("ids", (None, 3), np.int64))
    assert data.to_numpy().dtype == np.int64
    with pytest.raises(ZapoptError, match="float32 .* do not fit int64|float32 values do not fit"):
        open_dataset((x.astype(np.float32), None), ModelInput("ids", (None, 3), np.int64))


def test_model_none_gives_data_as_stored(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = open_dataset((x, None), None)
    np.testing.assert_array_equal(data.to_numpy(), x)


# --- validation errors -------------------------------------------------------------------

def test_rank_mismatch_names_both_shapes_and_dtypes() -> None:
    x = np.zeros((4, 28), dtype=np.uint8)
    with pytest.raises(ZapoptError) as err:
        open_dataset((x, None), FMNIST_INPUT)
    assert "uint8 [4, 28]" in str(err.value) and "float32 [N, 1, 28, 28]" in str(err.value)


def test_static_dim_mismatch_names_both_shapes() -> None:
    x = np.zeros((4, 3, 28, 28), dtype=np.float32)
    with pytest.raises(ZapoptError) as err:
        open_dataset((x, None), FMNIST_INPUT)
    message = str(err.value)
    assert "float32 [4, 3, 28, 28]" in message and "float32 [N, 1, 28, 28]" in message
    assert "dimension 1 is 3" in message


def test_other_integers_for_a_float_model_are_refused() -> None:
    x = np.zeros((4, 1, 28, 28), dtype=np.int64)
    with pytest.raises(ZapoptError, match=r"int64 \[4, 1, 28, 28\].*float32 \[N, 1, 28, 28\]"):
        open_dataset((x, None), FMNIST_INPUT)


def test_scale_options_on_float_data_are_refused() -> None:
    x = np.zeros((4, 1, 28, 28), dtype=np.float32)
    with pytest.raises(ZapoptError, match="8-bit pixels"):
        open_dataset((x, None), FMNIST_INPUT, ImageOptions(mean=(0.5,)))


def test_float_data_for_a_uint8_model_is_refused() -> None:
    x = np.zeros((4, 28, 28, 3), dtype=np.float32)
    with pytest.raises(ZapoptError, match=r"float32 \[4, 28, 28, 3\].*uint8 \[N, 28, 28, 3\]"):
        open_dataset((x, None), ModelInput("x", (None, 28, 28, 3), np.uint8))


def test_nan_and_inf_are_counted_with_the_file_name(tmp_path: Path) -> None:
    x = np.zeros((6, 1, 28, 28), dtype=np.float32)
    x[0, 0, 0, :2] = np.nan
    x[5, 0, 3, 3] = np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(ZapoptError, match=r"bad\.npy contains 3 NaN/Inf"):
        open_dataset(tmp_path / "bad.npy", FMNIST_INPUT)


def test_empty_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ZapoptError, match="empty"):
        open_dataset((np.zeros((0, 1, 28, 28), np.float32), None), FMNIST_INPUT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZapoptError, match="no images"):
        open_dataset(tmp_path / "empty", FMNIST_INPUT)


def test_label_problems(tmp_path: Path) -> None:
    x = np.zeros((5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    with pytest.raises(ZapoptError, match="4 labels for 5 samples"):
        open_dataset(tmp_path / "d.npz", FMNIST_INPUT)
    with pytest.raises(ZapoptError, match="1-D integer"):
        open_dataset((x, np.zeros(5, dtype=np.float32)), FMNIST_INPUT)


def test_npz_without_x_lists_its_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ZapoptError, match=r"\['images'\].*'x'"):
        open_dataset(tmp_path / "d.npz", FMNIST_INPUT)


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ZapoptError, match="not found"):
        open_dataset(tmp_path / "nothing.npy", FMNIST_INPUT)
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(ZapoptError, match="unknown data format 'data.csv'"):
        open_dataset(tmp_path / "data.csv", FMNIST_INPUT)
    with pytest.raises(ZapoptError, match="unknown embedded source"):
        open_dataset("embedded:cifar", FMNIST_INPUT)


def test_corrupt_npy_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ZapoptError, match="cannot read"):
        open_dataset(tmp_path / "x.npy", FMNIST_INPUT)


def test_fixed_batch_model_gets_its_own_batch_size_whatever_is_asked() -> None:
    data = open_dataset((np.zeros((3, 28, 28), np.uint8), None), ModelInput("x", (1, 1, 28, 28), np.float32))
    assert [b.shape[0] for b in data.batches(2)] == [1, 1, 1]
    assert [b.shape[0] for b in data.batches(1)] == [1, 1, 1]
    fours = open_dataset((np.zeros((10, 28, 28), np.uint8), None), ModelInput("x", (4, 1, 28, 28), np.float32))
    assert [b.shape[0] for b in fours.batches(64)] == [4, 4, 2]  # the runtime pads the last one
    with pytest.raises(ZapoptError, match="batch_size"):
        next(data.batches(0))


def test_bad_options_are_refused() -> None:
    with pytest.raises(ZapoptError, match="std must not contain 0"):
        ImageOptions(std=(1.0, 0.0, 1.0))
    with pytest.raises(ZapoptError, match="1 or 3"):
        ImageOptions(mean=(1.0, 2.0))
    with pytest.raises(ZapoptError, match="layout"):
        ImageOptions(layout="CHW")
    with pytest.raises(ZapoptError, match="crop"):
        ImageOptions(crop=(0, 3))


# --- image folders -----------------------------------------------------------------------

def test_image_dir_sorted_nchw_unit_scale(rgb_dir) -> None:
    directory, images = rgb_dir
    data = open_dataset(directory, ModelInput("x", (None, 3, 6, 8), np.float32))
    assert len(data) == 5 and data.labels is None
    out = data.to_numpy(batch_size=2)
    expected = np.stack(images).transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_image_dir_nhwc_bgr_mean_std(rgb_dir) -> None:
    directory, images = rgb_dir
    options = ImageOptions(channel_order="BGR", mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    out = open_dataset(directory, ModelInput("x", (None, 6, 8, 3), np.float32), options).to_numpy()
    expected = (np.stack(images)[..., ::-1] / 255.0 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_image_dir_grayscale_for_one_channel_model_and_uint8_model(rgb_dir) -> None:
    directory, images = rgb_dir
    gray = np.stack([np.asarray(Image.fromarray(i).convert("L")) for i in images])
    out = open_dataset(directory, ModelInput("x", (None, 1, 6, 8), np.float32)).to_numpy()
    np.testing.assert_allclose(out[:, 0], gray / 255.0, rtol=1e-6)
    raw = open_dataset(directory, ModelInput("x", (None, 6, 8, 3), np.uint8)).to_numpy()
    np.testing.assert_array_equal(raw, np.stack(images))
    replicated = open_dataset(directory, ModelInput("x", (None, 3, 6, 8), np.float32),
                              ImageOptions(grayscale=True)).to_numpy()
    np.testing.assert_allclose(replicated, np.repeat(gray[:, None] / 255.0, 3, axis=1), rtol=1e-6)


def test_resize_then_center_crop(tmp_path: Path) -> None:
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, 40:] = 255  # right half white
    save_png(tmp_path / "d" / "wide.png", pixels)
    options = ImageOptions(resize=20, crop=(20, 10))
    out = open_dataset(tmp_path / "d", ModelInput("x", (None, 3, 20, 10), np.float32), options).to_numpy()
    assert out.shape == (1, 3, 20, 10)
    # 40x80 -> 20x40, central 10 columns are 15..24: left five black, right five white.
    np.testing.assert_allclose(out[0, :, :, :4], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, 6:], 1.0, atol=1e-6)


def test_wrong_image_size_error_says_how_to_fix(rgb_dir) -> None:
    directory, _ = rgb_dir
    with pytest.raises(ZapoptError, match=r"\[N, 3, 6, 8\].*\[N, 3, 224, 224\].*resize/crop"):
        open_dataset(directory, ModelInput("x", (None, 3, 224, 224), np.float32))


def test_images_stream_lazily_and_bad_files_are_named_when_reached(rgb_dir) -> None:
    directory, _ = rgb_dir
    (directory / "zz_broken.png").write_bytes(b"not a png")
    data = open_dataset(directory, ModelInput("x", (None, 3, 6, 8), np.float32))  # opens fine
    batches = data.batches(2)
    assert next(batches).shape == (2, 3, 6, 8)
    with pytest.raises(ZapoptError, match="zz_broken.png"):
        list(batches)


def test_images_of_mixed_sizes_name_the_odd_one(tmp_path: Path) -> None:
    save_png(tmp_path / "d" / "a.png", np.zeros((6, 8, 3), np.uint8))
    save_png(tmp_path / "d" / "b.png", np.zeros((7, 8, 3), np.uint8))
    data = open_dataset(tmp_path / "d", ModelInput("x", (None, 3, None, None), np.float32))
    with pytest.raises(ZapoptError, match=r"b\.png comes out as \[7, 8, 3\]"):
        data.to_numpy()


def test_single_image_file_source(rgb_dir) -> None:
    directory, _ = rgb_dir
    data = open_dataset(directory / "a.png", ModelInput("x", (None, 3, 6, 8), np.float32))
    assert len(data) == 1


def test_dataset_is_read_only() -> None:
    data = open_dataset((np.zeros((2, 1, 28, 28), np.float32), None), FMNIST_INPUT)
    with pytest.raises(AttributeError, match="read-only"):
        data.dtype = np.dtype(np.float64)


def test_gray_arrays_for_a_color_model_say_why() -> None:
    with pytest.raises(ZapoptError, match=r"uint8 \[2, 28, 28\].*\[N, 3, 28, 28\]: rank-3 data feeds only a 1-channel"):
        open_dataset((np.zeros((2, 28, 28), np.uint8), None), ModelInput("x", (None, 3, 28, 28), np.float32))
