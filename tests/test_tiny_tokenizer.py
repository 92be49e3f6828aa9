"""Word-level tokenizer and LlavaProcessor of the tiny lab."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.models.tiny import shapes as S
from harness.models.tiny import tokenizer as T


@pytest.fixture(scope="module")
def tok():
    return T.build_tokenizer()


@pytest.fixture(scope="module")
def processor():
    return T.build_processor()


def test_vocabulary_layout(tok):
    vocab = T.vocabulary()
    assert vocab[:5] == ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    assert len(vocab) == len(set(vocab)) == tok.vocab_size == len(tok)
    assert vocab[5:] == sorted(vocab[5:])
    assert set(S.vocabulary()) | set(T.prompt_words()) == set(vocab[5:])
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("<image>") == 4
    assert tok.padding_side == "left"


def test_every_suite_word_is_known(tok):
    # every word of the suite's closed vocabulary is one known token (test_shapes checks that every
    # question/answer of every split lies in that vocabulary) ...
    for word in S.vocabulary():
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
    # ... and real samples encode word by word without <unk>
    samples = [s for t in S.TASKS for s in S.generate_split(t, "ci")]
    samples += S.make_batch(
        0, 48, curriculum=S.Curriculum(exist_forms=("color_shape",), spatial_forms=("shape",))
    )
    for s in samples:
        ids = tok(s.question, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids, s.question
        assert len(ids) == len(s.question.split())
        assert tok.decode(ids) == s.question
        answer = tok(s.answer, add_special_tokens=False).input_ids
        assert len(answer) == 1 and answer[0] != tok.unk_token_id
        for option in s.options or ():
            assert tok.unk_token_id not in tok(option, add_special_tokens=False).input_ids


def test_prompt_layout(tok):
    prompt = T.build_prompt("is there a red object ?")
    assert prompt.startswith(T.SYSTEM_PROMPT) and prompt.endswith("ASSISTANT :")
    tokens = tok.convert_ids_to_tokens(tok(prompt).input_ids)
    assert tokens[0] == "<s>" and tokens.count("<s>") == 1 and tokens[-1] != "</s>"
    i = tokens.index("<image>")
    assert tokens[:i] == ["<s>", "system", ":", "answer", "the", "question", "about", "the", "image", "."] + [
        "USER",
        ":",
    ]
    assert tokens[i + 1 :] == ["is", "there", "a", "red", "object", "?", "ASSISTANT", ":"]
    assert "<unk>" not in tokens
    # special tokens are matched without surrounding spaces (the processor concatenates <image>)
    assert tok("USER : <image><image> what", add_special_tokens=False).input_ids == tok.convert_tokens_to_ids(
        ["USER", ":", "<image>", "<image>", "what"]
    )


def _batch(n=3):
    samples = [S.make_sample("shapes_mc", "ci", 0), S.make_sample("shapes_exist", "ci", 1)]
    samples += [S.make_sample("shapes_read", "ci", i) for i in range(n - 2)]
    return samples


def test_processor_image_tokens_and_left_padding(processor, tok):
    samples = _batch(3)
    prompts = [T.build_prompt(s.question) for s in samples]
    out = processor(images=[s.pil() for s in samples], text=prompts, return_tensors="pt", padding=True)
    ids, mask, pixels = out["input_ids"], out["attention_mask"], out["pixel_values"]
    assert pixels.shape == (3, 3, 96, 96) and pixels.dtype == torch.float32
    assert (ids == processor.image_token_id).sum(1).tolist() == [T.NUM_IMAGE_TOKENS] * 3 == [144] * 3
    lengths = [len(tok(p).input_ids) - 1 + 144 for p in prompts]
    assert len(set(lengths)) > 1  # prompts really differ in length
    assert mask.sum(1).tolist() == lengths and ids.shape[1] == max(lengths)
    for row, n in zip(range(3), lengths, strict=True):
        pad = ids.shape[1] - n
        assert (ids[row, :pad] == tok.pad_token_id).all() and (mask[row, :pad] == 0).all()  # left padding
        assert ids[row, pad].item() == tok.bos_token_id
        assert tok.convert_ids_to_tokens(ids[row, -2:].tolist()) == ["ASSISTANT", ":"]
        image_pos = (ids[row] == processor.image_token_id).nonzero().flatten()
        assert image_pos.tolist() == list(range(pad + 12, pad + 12 + 144))  # contiguous, after 12 S tokens
    ref = (samples[0].image.astype(np.float32) / 255 - 0.5) / 0.5
    assert np.allclose(pixels[0].numpy(), ref.transpose(2, 0, 1), atol=1e-6)


def test_save_load_roundtrip_offline(tmp_path, monkeypatch, processor):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    T.save_processor(tmp_path / "proc")
    loaded = T.load_processor(tmp_path / "proc")
    assert loaded.patch_size == 8 and loaded.num_additional_image_tokens == 1
    assert loaded.vision_feature_select_strategy == "default" and loaded.image_token == "<image>"
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded.tokenizer.pad_token_id == 0 and loaded.tokenizer.bos_token_id == 2
    samples = _batch(4)
    kwargs = {"text": [T.build_prompt(s.question) for s in samples], "return_tensors": "pt", "padding": True}
    a = processor(images=[s.pil() for s in samples], **kwargs)
    b = loaded(images=[s.pil() for s in samples], **kwargs)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
