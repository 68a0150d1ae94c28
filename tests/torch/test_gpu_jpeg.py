"""zoobot.torch.gpu_jpeg on the CPU (this machine has no GPU, so nvJPEG itself is not exercised):
workers leave JPEGs encoded and decode the rest; the decode + resize the GPU runs gives, run on the
CPU, pixels within the stated tolerance of `read_image`; unreadable JPEGs become failed rows; the
capability check is off on CPUs and without CUDA, and obeys ZOOBOT_DISABLE; a run that takes the
path records its decoder, so its parts are never mixed with CPU-decoded ones."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import simplejpeg
import torch
from PIL import Image

from zoobot.data.images import read_image
from zoobot.data.synthetic import make_survey
from zoobot.torch import gpu_jpeg, runner
from zoobot.torch.gpu_jpeg import PIXEL_TOLERANCE, fill_on_device, gpu_decoding, split_rows

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> dict[tuple[int, int], list[str]]:
    """Synthetic survey JPEGs rendered at 128 and 424 px, to decode at 64 and 224 px."""
    out = tmp_path_factory.mktemp("jpegs")
    return {
        (native, size): make_survey(
            12, out / str(native), image_size=native, seed=2, progress=False
        )["file_loc"].tolist()
        for native, size in ((128, 64), (424, 224))
    }


def test_decoding_as_the_gpu_does_stays_within_the_stated_tolerance(jpegs):
    """nvJPEG has no DCT-domain scaling: a full-size decode and an antialiased resize, against
    `read_image`'s M/8 DCT scaling and exact bilinear resize. On the noisy sky of the synthetic
    survey that moves pixels by a few grey levels on average (PIXEL_TOLERANCE)."""
    for (_, size), paths in jpegs.items():
        images, ok, errors, encoded = split_rows(paths, size)
        assert ok.tolist() == list(range(len(paths))) and not errors
        assert [row for row, _ in encoded] == list(range(len(paths))) and not images.any()
        decoded = torch.from_numpy(images)
        assert fill_on_device(decoded, encoded, size, CPU) == []
        reference = np.stack([read_image(p, size) for p in paths]).astype(int)
        diff = np.abs(decoded.numpy().astype(int) - reference)
        assert diff.mean() <= PIXEL_TOLERANCE["mean"], diff.mean()
        assert np.percentile(diff, 99) <= PIXEL_TOLERANCE["p99"]


def test_workers_decode_what_is_not_a_jpeg_and_unreadable_files_fail(jpegs, tmp_path):
    path = jpegs[(128, 64)][0]
    png = tmp_path / "a.png"
    noise = np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(noise).save(png)  # with signal: read_image refuses blank images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    missing = str(tmp_path / "missing.jpg")
    images, ok, errors, encoded = split_rows([path, str(png), str(broken), missing], 64)
    assert ok.tolist() == [0, 1] and [i for i, _ in errors] == [2, 3]
    assert "not a JPEG or PNG" in errors[0][1] and "cannot read" in errors[1][1]
    assert [row for row, _ in encoded] == [0]
    np.testing.assert_array_equal(images[1], read_image(png, 64))

    # a JPEG cut short: its header reads, its data does not, for nvJPEG's stand-in or read_image
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = simplejpeg.encode_jpeg(pixels)
    cut = torch.frombuffer(bytearray(data[: len(data) // 3]), dtype=torch.uint8)
    good = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    target = torch.zeros((2, 64, 64, 3), dtype=torch.uint8)
    failed = fill_on_device(target, [(0, good), (1, cut)], 64, CPU)
    assert [row for row, _ in failed] == [1] and "cannot decode" in failed[0][1]
    assert target[0].any() and not target[1].any()


def test_the_capability_check(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="zoobot")
    assert not gpu_decoding(CPU) and not caplog.records  # nothing to say for a CPU run
    assert gpu_jpeg.decoder(CPU) == "read_image"
    if not torch.cuda.is_available():
        assert not gpu_decoding(torch.device("cuda"))
        assert "gpu_jpeg: off (torchvision cannot decode JPEGs on cuda" in caplog.text
    monkeypatch.setattr(gpu_jpeg, "_probe", lambda device: (True, "probed"))
    assert gpu_decoding(torch.device("cuda")) and gpu_jpeg.decoder(torch.device("cuda")) == "nvjpeg"
    monkeypatch.setenv("ZOOBOT_DISABLE", "gpu_jpeg")
    assert not gpu_decoding(torch.device("cuda"))
    assert "gpu_jpeg: off (turned off by ZOOBOT_DISABLE)" in caplog.text


def test_a_run_on_the_gpu_path_reports_failures_and_records_its_decoder(
    jpegs, tmp_path, monkeypatch
):
    """The GPU path forced on a CPU run: same rows and failures as the CPU path, and a manifest
    that no CPU-decoded run can resume."""
    from zoobot.torch import ZoobotTree, predict

    paths = jpegs[(128, 64)]
    catalog = pd.DataFrame({"id_str": [f"g{i}" for i in range(len(paths))], "file_loc": paths})
    catalog.loc[5, "file_loc"] = str(tmp_path / "missing.jpg")
    torch.manual_seed(0)
    model = ZoobotTree("decals_dr5", "resnet10t")
    options = {"image_size": 64, "batch_size": 4, "chunk_rows": 4, "progress": False}
    monkeypatch.setattr(runner, "gpu_decoding", lambda device: True)
    monkeypatch.setattr(runner, "decoder", lambda device: "nvjpeg")
    save_loc = tmp_path / "gpu.parquet"
    pending = predict(catalog, model, save_loc, num_workers=1, catalog_slice="0/2", **options)
    manifest = json.loads((tmp_path / "gpu.parquet.parts" / "manifest.json").read_text())
    assert pending.done == 1 and manifest["run"]["decoder"] == "nvjpeg"
    files = predict(catalog, model, save_loc, num_workers=1, **options)
    assert (files.n_predicted, files.n_failed) == (11, 1)
    assert pd.read_csv(files.failed)["id_str"].tolist() == ["g5"]

    monkeypatch.undo()
    predict(catalog, model, tmp_path / "cpu.parquet", num_workers=1, catalog_slice="0/2", **options)
    with pytest.raises(ValueError, match="differs in: decoder"):
        monkeypatch.setattr(runner, "decoder", lambda device: "nvjpeg")
        predict(catalog, model, tmp_path / "cpu.parquet", num_workers=0, **options)
