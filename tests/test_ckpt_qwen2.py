"""Qwen2.5 HF directories -> minmo's LLM slot: parity with transformers, strictness, the
real tokenizer with its ChatML template, LoRA through peft, and load memory.

The memory figure for a 1.5B-shaped checkpoint (acceptance 5) comes from the same helper:
``MINMO_CKPT_MEMORY_SHAPE=1.5b .venv/bin/python -m pytest tests/test_ckpt_qwen2.py -k memory -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minmo.checkpoints.foreign_common import ForeignCheckpointError
from minmo.config import LLMConfig, LoraConfig
from minmo.models.llm import build_llm, load_tokenizer
from test_ckpt_common import write_qwen2_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _reference_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _minmo_logits(llm, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return llm.logits(llm(llm.embed(ids)).hidden)


@pytest.mark.parametrize("tie", [False, True])
def test_qwen2_parity_sharded(tmp_path: Path, tie: bool) -> None:
    directory = write_qwen2_dir(tmp_path / "qwen", tie=tie)
    assert (directory / "model.safetensors.index.json").is_file()
    llm = build_llm(LLMConfig(arch="qwen2", path=str(directory)))
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_minmo_logits(llm, ids), _reference_logits(directory, ids))
    model = llm.model
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie


def test_qwen2_bf16_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    directory = write_qwen2_dir(tmp_path / "qwen", shard_size=None, dtype=torch.bfloat16)
    llm = build_llm(LLMConfig(arch="qwen2", path=str(directory)))
    assert llm.model.model.norm.weight.dtype == torch.float32
    file = load_file(str(directory / "model.safetensors"))
    key = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(llm.model.state_dict()[key], file[key].float())


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path))
    save_file(edit(tensors), str(path), metadata={"format": "pt"})


def test_renamed_key_is_named(tmp_path: Path) -> None:
    directory = write_qwen2_dir(tmp_path / "qwen", shard_size=None)
    key = "model.layers.0.mlp.up_proj.weight"
    _rewrite(directory / "model.safetensors",
             lambda t: {("model.layers.0.mlp.upproj.weight" if k == key else k): v for k, v in t.items()})
    with pytest.raises(ForeignCheckpointError) as err:
        build_llm(LLMConfig(path=str(directory)))
    assert "model.layers.0.mlp.upproj.weight" in str(err.value) and key in str(err.value)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    directory = write_qwen2_dir(tmp_path / "qwen", shard_size=None)
    key = "model.layers.1.self_attn.k_proj.weight"
    _rewrite(directory / "model.safetensors",
             lambda t: {k: (v[:8] if k == key else v) for k, v in t.items()})
    with pytest.raises(ForeignCheckpointError, match=r"k_proj.weight \(file \(8, 64\), model \(32, 64\)\)"):
        build_llm(LLMConfig(path=str(directory)))


def test_truncated_and_missing_shards_are_refused(tmp_path: Path) -> None:
    directory = write_qwen2_dir(tmp_path / "qwen")
    shards = sorted(directory.glob("model-*.safetensors"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:-100])
    with pytest.raises(ForeignCheckpointError, match=f"{shards[1].name}: truncated"):
        build_llm(LLMConfig(path=str(directory)))
    shards[1].unlink()
    with pytest.raises(ForeignCheckpointError, match=f"missing: {shards[1].name}"):
        build_llm(LLMConfig(path=str(directory)))


def test_real_tokenizer_and_chatml_template(tmp_path: Path) -> None:
    directory = write_qwen2_dir(tmp_path / "qwen", shard_size=None)
    tok = load_tokenizer(LLMConfig(path=str(directory), tokenizer="auto"))
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "hello"}]
    text = tok.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text)
    assert ids[0] == tok.im_start_id and ids.count(tok.im_end_id) == 2
    assert tok.decode(ids, skip_special_tokens=False) == text
    # minmo's speech delimiters were added; the LLM grows its table only if it must
    assert tok.sos_speech_id >= 300 and len(tok) == 302
    llm = build_llm(LLMConfig(path=str(directory)), vocab_size=len(tok))
    assert llm.vocab_size == 320  # 320 rows already cover 302 tokens


def _lora_cfg() -> LoraConfig:
    return LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def test_lora_saved_by_minmo_loads_in_peft(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import Qwen2ForCausalLM

    directory = write_qwen2_dir(tmp_path / "qwen", shard_size=None)
    llm = build_llm(LLMConfig(path=str(directory), lora=_lora_cfg()))
    llm.enable_lora()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in llm.lora_parameters().items():
            p.normal_(0, 0.5)
    llm.save_lora(tmp_path / "adapter")
    ids = torch.randint(0, 300, (1, 7), generator=torch.Generator().manual_seed(2))
    ours = _minmo_logits(llm.eval(), ids)
    base = Qwen2ForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    assert not torch.allclose(ours, _reference_logits(directory, ids), atol=1e-3)  # LoRA acts
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_lora_saved_by_peft_loads_in_minmo(tmp_path: Path) -> None:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import Qwen2ForCausalLM

    directory = write_qwen2_dir(tmp_path / "qwen", shard_size=None)
    base = Qwen2ForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    peft_model = get_peft_model(base, PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                     target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    ids = torch.randint(0, 300, (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = peft_model.eval()(input_ids=ids).logits
    llm = build_llm(LLMConfig(path=str(directory), lora=_lora_cfg()))
    llm.load_lora(tmp_path / "adapter")
    torch.testing.assert_close(_minmo_logits(llm.eval(), ids), theirs, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# Memory: peak RSS of loading, measured in a fresh process
# --------------------------------------------------------------------------------------

SHAPES = {
    # small enough for the default test run (~70M parameters, float32: ~280 MB)
    "small": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=6,
                  num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False),
    # Qwen2.5-1.5B
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
}


def write_random_qwen2(directory: Path, shape: dict, dtype: torch.dtype,
                       shard_bytes: int = 1 << 30) -> int:
    """A random Qwen2 checkpoint written tensor by tensor into ~``shard_bytes`` shards
    (never the whole model in memory). Returns the bytes of weights written."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(max_position_embeddings=4096, **shape)
    with torch.device("meta"):
        meta = Qwen2ForCausalLM(config)
    names = [(k, v.shape) for k, v in meta.state_dict().items()
             if not (shape["tie_word_embeddings"] and k == "lm_head.weight")]
    directory.mkdir(parents=True)
    config.save_pretrained(str(directory))
    gen = torch.Generator().manual_seed(0)
    shards, current, size, total = [], {}, 0, 0

    def flush() -> None:
        nonlocal current, size
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(current, str(directory / name), metadata={"format": "pt"})
        shards.append((name, list(current)))
        current, size = {}, 0

    for key, shp in names:
        t = (torch.randn(shp, generator=gen) * 0.02).to(dtype)
        current[key] = t
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if size >= shard_bytes:
            flush()
    if current:
        flush()
    weight_map = {k: name for name, keys in shards for k in keys}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


MEASURE = textwrap.dedent("""
    import json, sys, time
    import torch
    from minmo.models.llm import load_pretrained_causal_lm
    import accelerate, transformers.models.qwen2.modeling_qwen2  # code loaded before the baseline
    dtype = getattr(torch, sys.argv[2])

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    base = status("VmRSS")
    start = time.perf_counter()
    model = load_pretrained_causal_lm(sys.argv[1], dtype=dtype)
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"baseline": base, "peak": peak, "seconds": seconds, "param_bytes": params}))
""")


def measure_load(directory: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(directory), dtype], check=True,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_load_memory_peak_is_about_model_size(tmp_path: Path) -> None:
    shape_name = os.environ.get("MINMO_CKPT_MEMORY_SHAPE", "small")
    dtype = torch.bfloat16 if shape_name != "small" else torch.float32
    weights = write_random_qwen2(tmp_path / "ckpt", SHAPES[shape_name], dtype,
                                 shard_bytes=(1 << 30) if shape_name != "small" else (64 << 20))
    result = measure_load(tmp_path / "ckpt", str(dtype).removeprefix("torch."))
    delta = result["peak"] - result["baseline"]
    print(f"\n[memory] shape={shape_name} weights={weights / 2**20:.0f} MiB "
          f"baseline={result['baseline'] / 2**20:.0f} MiB peak={result['peak'] / 2**20:.0f} MiB "
          f"load delta={delta / 2**20:.0f} MiB ratio={delta / weights:.3f} "
          f"peak/weights={result['peak'] / weights:.3f} time={result['seconds']:.1f}s")
    assert result["param_bytes"] == weights
    assert delta <= 1.2 * weights
