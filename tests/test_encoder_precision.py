"""The CPU encoder's bfloat16 image tower (on by default where the CPU has AMX): forced on, it
gives the float32 vectors to cosine 0.999 and leaves text untouched; a failed check keeps float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmsearch.encoders import torch_encoder as model_module
from mmsearch.encoders import ModelSpec, TorchEncoder as Encoder
from mmsearch.encoders.onnx_text import _cpu_fp32
from mmsearch.settings import Settings

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))
TEXTS = ["a red pasta dish", "a cat on a sofa", "mountain lake at dawn"]


def encoder(tiny_model, monkeypatch, setting: str) -> Encoder:
    monkeypatch.setenv("MMSEARCH_CPU_BF16", setting)
    return Encoder(ModelSpec.resolve(str(tiny_model.config), str(tiny_model.checkpoint)), "cpu",
                   Settings.from_env().cpu_bf16)


def photos() -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in PHOTOS]


def dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_bf16_image_tower_gives_the_float32_vectors(tiny_model, monkeypatch):
    exact = encoder(tiny_model, monkeypatch, "0")
    fast = encoder(tiny_model, monkeypatch, "1")
    assert exact.image_dtype == torch.float32 and dtypes(exact.model.visual) == {torch.float32}
    assert fast.image_dtype == torch.bfloat16 and dtypes(fast.model.visual) == {torch.bfloat16}
    cosine = (exact.encode_images(photos()) * fast.encode_images(photos())).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    # Text is float32 in both, so the ONNX export reads the encoder's own weights, not a copy.
    assert np.array_equal(exact.encode_texts(TEXTS), fast.encode_texts(TEXTS))
    assert _cpu_fp32(fast.model, torch) is fast.model


def test_failed_bf16_check_keeps_float32(tiny_model, monkeypatch):
    exact = encoder(tiny_model, monkeypatch, "0")
    monkeypatch.setattr(model_module, "BF16_MIN_COSINE", 1.5)  # no cosine can pass
    kept = encoder(tiny_model, monkeypatch, "1")
    assert kept.image_dtype == torch.float32 and dtypes(kept.model.visual) == {torch.float32}
    assert np.array_equal(exact.encode_images(photos()), kept.encode_images(photos()))


@pytest.mark.parametrize("setting, expected", [("0", False), ("off", False), ("1", True), ("yes", True)])
def test_bf16_setting(monkeypatch, setting, expected):
    monkeypatch.setenv("MMSEARCH_CPU_BF16", setting)
    assert model_module.cpu_bf16_wanted(Settings.from_env().cpu_bf16) is expected


def test_bf16_auto_follows_the_cpu(monkeypatch):
    monkeypatch.delenv("MMSEARCH_CPU_BF16", raising=False)
    setting = Settings.from_env().cpu_bf16
    assert model_module.cpu_bf16_wanted(setting) is model_module.cpu_has_amx_bf16()
    monkeypatch.setattr(model_module, "cpu_has_amx_bf16", lambda: False)
    assert model_module.cpu_bf16_wanted(setting) is False
