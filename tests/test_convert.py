"""LLaVA original-layout checkpoints (ViCA / YOPO / SAISA publish this way) -> HF layout, on a
locally fabricated checkpoint; the SAISA architecture with its per-layer projectors."""

import json

import pytest
import torch

from harness.models.backbones.base import collate
from harness.models.backbones.loading import load_backbone
from harness.models.backbones.random import randomize_norms
from harness.models.convert import ConvertError, convert_llava_original
from harness.models.verify import verify_dense, verify_plan

H, LAYERS, VOCAB, DV = 32, 3, 40, 24


def _fabricate(tmp_path, saisa: bool):
    import transformers
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    clip_dir = tmp_path / "clip"
    vt = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=DV, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=56, patch_size=14))  # fmt: skip
    randomize_norms(vt).save_pretrained(clip_dir)  # norm weights and biases drawn at random
    from transformers.models.clip import CLIPImageProcessorPil

    CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        clip_dir
    )
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=H, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4, vocab_size=VOCAB,
        initializer_range=0.1))  # fmt: skip
    state = {k: v.contiguous() for k, v in randomize_norms(llama).state_dict().items()}
    state["model.mm_projector.0.weight"] = torch.randn(H, DV) * 0.1
    state["model.mm_projector.0.bias"] = torch.zeros(H)
    state["model.mm_projector.2.weight"] = torch.randn(H, H) * 0.1
    state["model.mm_projector.2.bias"] = torch.zeros(H)
    if saisa:
        for layer in range(LAYERS):
            state[f"model.layers.{layer}.mm_projector.0.weight"] = torch.randn(H, DV) * 0.1
            state[f"model.layers.{layer}.mm_projector.0.bias"] = torch.zeros(H)
            state[f"model.layers.{layer}.mm_projector.2.weight"] = torch.randn(H, H) * 0.1
            state[f"model.layers.{layer}.mm_projector.2.bias"] = torch.zeros(H)
    src = tmp_path / "original"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"))
    cfg = llama.config.to_dict() | {"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
                                    "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_layer": -2,
                                    "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu"}  # fmt: skip
    (src / "config.json").write_text(json.dumps(cfg))
    words = ["<unk>", "<s>", "</s>", "USER:", "ASSISTANT:"] + [f"w{i}" for i in range(VOCAB - 5)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>", pad_token="<unk>")  # fmt: skip
    tok.save_pretrained(src)
    return src, clip_dir, state


def test_convert_maps_every_weight_and_verifies(tmp_path):
    src, clip_dir, state = _fabricate(tmp_path, saisa=False)
    out = tmp_path / "hf"
    meta = convert_llava_original(src, clip_dir, out)
    assert meta["layout"] == "llava-original" and "architecture" not in meta
    bb = load_backbone(str(out))
    sd = bb.model.state_dict()
    assert torch.equal(
        sd["model.multi_modal_projector.linear_1.weight"], state["model.mm_projector.0.weight"]
    )
    assert torch.equal(
        sd["model.language_model.layers.1.mlp.up_proj.weight"], state["model.layers.1.mlp.up_proj.weight"]
    )
    assert torch.equal(
        sd["model.language_model.embed_tokens.weight"][:VOCAB], state["model.embed_tokens.weight"]
    )
    assert bb.image_token_id == VOCAB and bb.config.vision_feature_layer == -2
    from harness.models.verify import checkpoint_samples

    samples = checkpoint_samples(bb, 2)
    assert (samples[0]["input_ids"] == VOCAB).sum() == 16  # (56 / 14)^2 patches
    rep = verify_dense(bb, samples, max_new_tokens=4)
    assert rep.ok, rep


def test_saisa_checkpoint_runs_with_its_projectors(tmp_path):
    from harness.baselines.registry import build_stack
    from harness.flops.counted import flops_cell
    from harness.models.saisa import SaisaBackbone
    from harness.models.verify import checkpoint_samples

    src, clip_dir, state = _fabricate(tmp_path, saisa=True)
    out = tmp_path / "hf"
    assert convert_llava_original(src, clip_dir, out)["architecture"] == "saisa"
    bb = load_backbone(str(out))
    assert isinstance(bb, SaisaBackbone)
    assert torch.equal(bb.projectors[2][0].weight, state["model.layers.2.mm_projector.0.weight"])
    plan = build_stack("saisa").plan(bb)
    samples = checkpoint_samples(bb, 2)
    rep = verify_plan(bb, collate(bb, samples), plan, max_new_tokens=3)
    assert rep.ok
    cell = flops_cell(bb, samples[0], plan)
    assert max(cell.rel_diff().values()) <= 0.01, cell.rel_diff()


def test_saisa_rejects_a_backbone_without_projectors(random_backbones):
    from harness.baselines.registry import build_stack
    from harness.models.method import MethodError

    with pytest.raises(MethodError, match="needs a SAISA checkpoint"):
        build_stack("saisa").plan(random_backbones["llava-1.5"])


def test_convert_errors_are_one_line(tmp_path):
    with pytest.raises(ConvertError, match="has no config.json"):
        convert_llava_original(tmp_path, tmp_path, tmp_path / "o")
    src, clip_dir, _ = _fabricate(tmp_path, saisa=False)
    with pytest.raises(ConvertError, match="is not a local CLIP directory"):
        convert_llava_original(src, tmp_path / "nope", tmp_path / "o")
