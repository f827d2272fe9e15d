"""A small multilingual open_clip model made offline: an XLM-RoBERTa text tower (a real
``transformers`` model, randomly initialised from a config.json) with a SentencePiece-style
Unigram tokenizer trained here, loaded by open_clip through ``text_cfg.hf_model_name`` pointing
at a local folder, exactly as ``xlm-roberta-base-ViT-B-32.json`` names the hub repository
``xlm-roberta-base``. Used by tests/test_multilingual.py and scripts/bench_multilingual.py.
"""

from __future__ import annotations

import json
from pathlib import Path

# Multilingual captions: what such a model is for, and what the tokenizer is trained on.
CAPTIONS = [
    "a dog running on green grass", "un chien qui court sur l'herbe verte", "ein Hund rennt über grünes Gras",
    "un perro corriendo sobre la hierba", "собака бежит по зелёной траве", "草の上を走る犬", "在草地上奔跑的狗",
    "잔디 위를 달리는 개", "كلب يركض على العشب الأخضر", "κύων τρέχει στο γρασίδι", "a red pasta dish with basil",
    "crème brûlée et café au lait", "東京の夜景 🌃 night skyline", "北京烤鸭 🦆", "emoji 🐶🐱👍🏽 text",
]
_EXTRA_CORPUS = [
    "a photo of a dog", "A DOG!!", "café naïve résumé Ærøskøbing", "東京タワーの夜景", "한국어 텍스트", "مرحبا بالعالم",
    "Привет, мир!", "3.14159 12345", "it's they're we've I'm you'll", "https://example.com/a?b=c&d=e#f",
    "snake_case camelCase kebab-case", "1,000,000.00 $5 €10 50%", "(parentheses) [brackets] {braces}",
]
# XLM-RoBERTa base's text tower (278M parameters, most of them the 250002-token embedding):
# with a tokenizer trained here, for timings of a model of the published size.
BASE_TEXT = {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072}
TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# nllb-clip-base's kind of text tower: the encoder of an M2M100 (NLLB) translation model, pooled
# on its first token, with NLLB's tokenizer (a language code first: eng_Latn). 1000 ids: the
# tokenizer's 400 plus NLLB's 200-odd language codes.
TINY_NLLB_TEXT = {"model_type": "m2m_100", "vocab_size": 1000, "d_model": 32, "encoder_layers": 2,
                  "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                  "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 1024,
                  "decoder_start_token_id": 2, "scale_embedding": True}


def write_xlmr_model(folder: Path, seed: int = 0, name: str = "mmxlmr", proj: str = "linear",
                     text: dict | None = None, embed_dim: int = 32, nllb: bool = False) -> tuple[Path, Path]:
    """(open_clip config, checkpoint) of an XLM-RoBERTa CLIP written into ``folder``, its
    tokenizer and Hugging Face config in ``folder/hf``. ``text``: the text tower's size
    (``TINY_TEXT`` by default, ``BASE_TEXT`` for xlm-roberta-base's). ``nllb``: an NLLB-CLIP
    instead (M2M100 encoder, CLS pooling, NLLB's tokenizer class)."""
    import open_clip
    import torch
    from tokenizers import SentencePieceUnigramTokenizer, processors

    hf = folder / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    # XLM-RoBERTa's special tokens and ids: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last.
    tokenizer = SentencePieceUnigramTokenizer()
    tokenizer.train_from_iterator([*CAPTIONS, *_EXTRA_CORPUS] * 5, vocab_size=400,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                  show_progress=False)
    tokenizer.add_special_tokens(["<mask>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.save(str(hf / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    (hf / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "NllbTokenizer" if nllb else "XLMRobertaTokenizer", "model_max_length": 512, **specials}))
    (hf / "special_tokens_map.json").write_text(json.dumps(specials))
    ids = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
    (hf / "config.json").write_text(json.dumps({**ids, **TINY_NLLB_TEXT} if nllb else {
        "model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"], "vocab_size": tokenizer.get_vocab_size(),
        "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, **ids, **(text or TINY_TEXT),
    }))
    config = folder / f"{name}.json"
    config.write_text(json.dumps({
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
        # As xlm-roberta-base-ViT-B-32.json, with a local folder for the hub repository.
        "text_cfg": {"hf_model_name": str(hf), "hf_tokenizer_name": str(hf),
                     "hf_pooler_type": "cls_pooler" if nllb else "mean_pooler",
                     "hf_proj_type": proj, "hf_model_pretrained": False},
    }))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    # No checkpoint named here: without pretrained_text=False open_clip would fetch the hub weights.
    model = open_clip.create_model(name, pretrained_text=False)
    checkpoint = folder / f"{name}-seed{seed}.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint
