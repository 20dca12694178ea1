"""Writers of miniature checkpoints in the official layouts (shared by tests/test_ckpt_*.py,
which import them from here), and tests of the importers' common helpers.

Each writer produces the same file names, key names and config fields as the public
release it imitates, at toy sizes and with seeded random weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from minmo.checkpoints.foreign_common import (
    ForeignCheckpointError,
    TaggedNode,
    read_tagged_yaml,
    torch_load_state_dict,
)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The ChatML part of Qwen2.5's chat template (its tool-calling branches left out).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def write_qwen_tokenizer(directory: Path, vocab_size: int = 300) -> int:
    """A byte-level BPE tokenizer in Qwen2.5's layout (tokenizer.json, vocab.json,
    merges.txt, tokenizer_config.json with the ChatML template). Returns its length."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(QWEN_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = ["hello world, how are you today?", "the quick brown fox jumps over the lazy dog",
            "You are a helpful assistant.", "what is the weather like"] * 20
    tok.train_from_iterator(text, trainer)
    tok.add_special_tokens(QWEN_SPECIALS)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    tok.model.save(str(directory))  # vocab.json + merges.txt, as the release ships them
    decoder = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
               for t in QWEN_SPECIALS}
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "chat_template": QWEN_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok.get_vocab_size()


def write_qwen2_dir(directory: Path, vocab_size: int = 320, tie: bool = False,
                    shard_size: str | None = "40KB", seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Path:
    """A Qwen2.5-style HF directory: config.json, generation_config.json, safetensors
    shards with model.safetensors.index.json, tokenizer files."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        bos_token_id=None, eos_token_id=None,
    )
    model = Qwen2ForCausalLM(config).to(dtype).eval()
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    write_qwen_tokenizer(directory)
    return directory


# --------------------------------------------------------------------------------------
# CTranslate2 model.bin
# --------------------------------------------------------------------------------------

CT2_DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3,
                 torch.float16: 4, torch.bfloat16: 5}


def write_ct2_model_bin(path: Path, spec_name: str, revision: int,
                        variables: dict[str, torch.Tensor], aliases: dict[str, str] | None = None,
                        version: int = 6) -> None:
    """Write a CTranslate2 ``model.bin`` (binary version 6 layout, as its Python spec
    serialiser writes: variables sorted by name, then aliases)."""

    def string(s: str) -> bytes:
        raw = s.encode("utf-8")
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    out = [struct.pack("<I", version), string(spec_name), struct.pack("<I", revision),
           struct.pack("<I", len(variables))]
    for name in sorted(variables):
        value = variables[name].contiguous()
        out.append(string(name))
        out.append(struct.pack("<B", value.dim()))
        out.append(struct.pack(f"<{value.dim()}I", *value.shape))
        raw = value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b""
        out.append(struct.pack("<B", CT2_DTYPE_IDS[value.dtype]))
        out.append(struct.pack("<I", len(raw)))
        out.append(raw)
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out.append(string(alias) + string(target))
    path.write_bytes(b"".join(out))


def hf_whisper_encoder_to_ct2(encoder_state: dict[str, torch.Tensor], num_heads: int,
                              dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """transformers Whisper encoder tensors -> CTranslate2 ``WhisperSpec`` encoder variables
    (q/k/v fused into ``linear_0`` with a zero key bias, as CTranslate2's converter does)."""
    out: dict[str, torch.Tensor] = {"encoder/num_heads": torch.tensor(num_heads, dtype=torch.int16)}

    def put(name: str, t: torch.Tensor) -> None:
        out[f"encoder/{name}"] = t.to(dtype)

    for conv in ("conv1", "conv2"):
        put(f"{conv}/weight", encoder_state[f"{conv}.weight"])
        put(f"{conv}/bias", encoder_state[f"{conv}.bias"])
    put("position_encodings/encodings", encoder_state["embed_positions.weight"])
    put("layer_norm/gamma", encoder_state["layer_norm.weight"])
    put("layer_norm/beta", encoder_state["layer_norm.bias"])
    layers = sorted({int(k.split(".")[1]) for k in encoder_state if k.startswith("layers.")})
    for i in layers:
        p, s = f"layers.{i}.", f"layer_{i}/"
        q, k, v = (encoder_state[p + f"self_attn.{n}_proj.weight"] for n in "qkv")
        put(s + "self_attention/linear_0/weight", torch.cat([q, k, v]))
        put(s + "self_attention/linear_0/bias", torch.cat([
            encoder_state[p + "self_attn.q_proj.bias"], torch.zeros_like(q[:, 0]),
            encoder_state[p + "self_attn.v_proj.bias"]]))
        put(s + "self_attention/linear_1/weight", encoder_state[p + "self_attn.out_proj.weight"])
        put(s + "self_attention/linear_1/bias", encoder_state[p + "self_attn.out_proj.bias"])
        put(s + "self_attention/layer_norm/gamma", encoder_state[p + "self_attn_layer_norm.weight"])
        put(s + "self_attention/layer_norm/beta", encoder_state[p + "self_attn_layer_norm.bias"])
        put(s + "ffn/linear_0/weight", encoder_state[p + "fc1.weight"])
        put(s + "ffn/linear_0/bias", encoder_state[p + "fc1.bias"])
        put(s + "ffn/linear_1/weight", encoder_state[p + "fc2.weight"])
        put(s + "ffn/linear_1/bias", encoder_state[p + "fc2.bias"])
        put(s + "ffn/layer_norm/gamma", encoder_state[p + "final_layer_norm.weight"])
        put(s + "ffn/layer_norm/beta", encoder_state[p + "final_layer_norm.bias"])
    return out


# --------------------------------------------------------------------------------------
# tests of foreign_common
# --------------------------------------------------------------------------------------


def test_tagged_yaml_reads_hyperpyyaml_as_data(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "__set_seed1: !apply:random.seed [1986]\n"
        "chunk_size: 25\ntoken_mel_ratio: 2\nllm_input_size: 896\n"
        "llm: !new:cosyvoice.llm.llm.Qwen2LM\n"
        "    llm_input_size: !ref <llm_input_size>\n"
        "    sampling: !name:cosyvoice.utils.common.ras_sampling\n"
        "        top_p: 0.8\n"
        "decoder_chunk: !ref <chunk_size> * <token_mel_ratio>\n")
    data = read_tagged_yaml(path)
    assert isinstance(data["llm"], TaggedNode) and data["llm"].target == "cosyvoice.llm.llm.Qwen2LM"
    assert data["llm"].get("llm_input_size") == 896
    assert data["llm"].get("sampling").get("top_p") == 0.8
    assert data["decoder_chunk"] == 50
    assert data["__set_seed1"].args == [1986]  # recorded, never called


def test_tagged_yaml_bad_ref_names_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: !ref <nope>\n")
    with pytest.raises(ForeignCheckpointError, match="nope"):
        read_tagged_yaml(path)


def test_torch_load_refuses_truncated_and_unwraps(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"a": torch.ones(3)}, "epoch": 3}, path)
    assert set(torch_load_state_dict(path)) == {"a"}
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ForeignCheckpointError, match="model.pt"):
        torch_load_state_dict(path)


def test_torch_load_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"a": torch.ones(1), "obj": Path("x")}, path)  # a non-tensor class object
    with pytest.raises(ForeignCheckpointError, match="weights_only"):
        torch_load_state_dict(path)
