"""CosyVoice 2 release directory -> minmo's voice token LM (and the shapes of the full-size
release against minmo-7b's voice_lm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minmo.checkpoints.cosyvoice2 import (
    flow_config,
    hift_config,
    import_cosyvoice2_flow,
    import_cosyvoice2_hift,
    import_cosyvoice2_llm,
    voice_lm_config,
)
from minmo.checkpoints.foreign_common import ForeignCheckpointError
from minmo.config import load_model_config
from minmo.models.flow import ChunkFlowMatching
from minmo.models.vocoder import HiFTVocoder
from minmo.models.voice_lm import VoiceTokenLM

# cosyvoice2.yaml as released (model sections; data/training sections shortened), with the
# sizes as format fields so the test can write a miniature one (FULL: the release's sizes).
COSYVOICE2_YAML = """\
# set random seed, so that you may reproduce your result.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

# fixed params
sample_rate: 24000
llm_input_size: {hidden}
llm_output_size: {hidden}
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2

# stream related params
chunk_size: 25 # streaming inference chunk size, in token
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: {enc}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: {enc}
        attention_heads: {enc_heads}
        linear_units: {enc_ffn}
        num_blocks: {enc_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {enc}
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{est}]
            dropout: 0.0
            attention_head_dim: {est_head_dim}
            n_blocks: {est_blocks}
            num_mid_blocks: {est_mid}
            num_heads: {est_heads}
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {hift}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {hift}

# processor functions
parquet_opener: !name:cosyvoice.dataset.processor.parquet_opener
get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
tokenize: !name:cosyvoice.dataset.processor.tokenize
    get_tokenizer: !ref <get_tokenizer>
    allowed_special: !ref <allowed_special>
data_pipeline: [
    !ref <parquet_opener>,
    !ref <tokenize>,
]
"""

FULL = dict(hidden=896, enc=512, enc_heads=8, enc_ffn=2048, enc_blocks=6, est=256, est_head_dim=64,
            est_blocks=4, est_mid=12, est_heads=8, hift=512)
TINY = dict(hidden=64, enc=32, enc_heads=2, enc_ffn=64, enc_blocks=1, est=32, est_head_dim=16,
            est_blocks=1, est_mid=1, est_heads=2, hift=16)

# Qwen2.5-0.5B's config.json fields (CosyVoice-BlankEN/config.json) at a given size
QWEN_BLANK = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
              "eos_token_id": 151643, "hidden_act": "silu", "initializer_range": 0.02,
              "max_window_layers": 24, "model_type": "qwen2", "rms_norm_eps": 1e-06,
              "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "use_cache": False, "use_sliding_window": False}


def write_cosyvoice2_dir(directory: Path, seed: int = 0, blank_config: bool = True,
                         heads: int = 4, kv_heads: int = 2, onnx: bool = False):
    """A CosyVoice2-0.5B-style folder with ``cosyvoice2.yaml``, ``llm.pt``, ``flow.pt`` and
    ``hift.pt`` at toy size (``onnx``: also ``campplus.onnx`` and ``speech_tokenizer_v2.onnx``).

    Returns the Qwen2ForCausalLM used as the LM body (for reference outputs) and the state."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, text_vocab, speech = 64, 50, 6561
    directory.mkdir(parents=True)
    (directory / "cosyvoice2.yaml").write_text(COSYVOICE2_YAML.format(**TINY))
    qwen = dict(QWEN_BLANK, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                vocab_size=text_vocab)
    if blank_config:
        (directory / "CosyVoice-BlankEN").mkdir()
        (directory / "CosyVoice-BlankEN" / "config.json").write_text(json.dumps(qwen))
    torch.manual_seed(seed)
    body = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in qwen.items() if k != "architectures"}))
    state = {"llm_embedding.weight": torch.randn(2, hidden)}
    state.update({f"llm.model.{k}": v for k, v in body.state_dict().items()})
    state["llm_decoder.weight"] = torch.randn(speech + 3, hidden) * 0.05
    state["llm_decoder.bias"] = torch.randn(speech + 3) * 0.05
    state["speech_embedding.weight"] = torch.randn(speech + 3, hidden)
    torch.save(state, directory / "llm.pt")
    # flow.pt / hift.pt: the release's key names (those of CausalMaskedDiffWithXvec and
    # HiFTGenerator, which minmo's modules share), at the tiny yaml's sizes
    torch.save(_perturbed(ChunkFlowMatching(flow_config(directory)).state_dict()), directory / "flow.pt")
    hift = _perturbed(HiFTVocoder(hift_config(directory)).state_dict())
    torch.save({f"generator.{k}": v for k, v in hift.items()}, directory / "hift.pt")
    if onnx:
        write_campplus_onnx(directory / "campplus.onnx")
        write_s3_tokenizer_onnx(directory / "speech_tokenizer_v2.onnx")
    return body.eval(), state


class S3TokenizerLike(torch.nn.Module):
    """The S3 tokenizer v2 ONNX signature at toy size: ``feats (1, 128, T)`` float32 and
    ``feats_length (1,)`` int32 -> ``speech_token (1, ceil(T / 4))`` ids in [0, 6561) (two
    stride-2 convolutions, then 8 ternary digits)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = torch.nn.Conv1d(128, 16, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv1d(16, 8, 3, stride=2, padding=1)
        self.register_buffer("basis", 3 ** torch.arange(8)[None, :, None])

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(feats)))
        x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)  # varied ids
        digits = x.round().clamp(-1, 1) + 1
        ids = (digits.long() * self.basis).sum(1)
        valid = torch.arange(ids.shape[1])[None, :] < (feats_length.long()[:, None] + 3) // 4
        return ids * valid


class CampplusLike(torch.nn.Module):
    """CAM++'s ONNX signature at toy size: fbank ``(1, T, 80)`` -> ``(1, 192)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.proj = torch.nn.Linear(160, 192)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([feats.mean(1), feats.std(1)], dim=-1))


def write_s3_tokenizer_onnx(path: Path) -> S3TokenizerLike:
    model = S3TokenizerLike().eval()
    torch.onnx.export(model, (torch.randn(1, 128, 40), torch.tensor([40], dtype=torch.int32)), str(path),
                      dynamo=False, input_names=["feats", "feats_length"], output_names=["speech_token"],
                      dynamic_axes={"feats": {2: "frames"}, "speech_token": {1: "tokens"}})
    return model


def write_campplus_onnx(path: Path) -> CampplusLike:
    model = CampplusLike().eval()
    torch.onnx.export(model, (torch.randn(1, 50, 80),), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {1: "frames"}})
    return model


def _perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


def test_voice_lm_imports_with_official_keys(tmp_path: Path) -> None:
    body, state = write_cosyvoice2_dir(tmp_path / "cv2")
    part = import_cosyvoice2_llm(tmp_path / "cv2")
    cfg = part.sections["voice_lm"]
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.speech_vocab) == (64, 2, 4, 2, 6561)
    assert (cfg.top_p, cfg.top_k, cfg.ras_window, cfg.ras_tau, cfg.mix_ratio) == (0.8, 25, 10, 0.1, [5, 15])
    assert set(part.report.dropped) == {"llm.model.model.embed_tokens.weight", "llm.model.lm_head.weight"}
    assert part.report.fresh and part.report.fresh[0].startswith("body.embed_tokens.weight")
    lm = VoiceTokenLM(cfg).eval()
    lm.load_state_dict(part.tensors, strict=False)
    assert torch.equal(lm.special_embedding.weight, state["llm_embedding.weight"])
    # same outputs as CosyVoice 2's path: Qwen2ForCausalLM hidden_states[-1] -> llm_decoder
    x = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = body(inputs_embeds=x, output_hidden_states=True).hidden_states[-1]
        ref = torch.nn.functional.linear(hidden, state["llm_decoder.weight"], state["llm_decoder.bias"])
        ours = lm.decoder(lm.body(inputs_embeds=x).last_hidden_state)
    assert lm.fill_id == 6563 and lm.eos_id == 6561  # CosyVoice 2's speech vocabulary layout
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(lm.speech_embedding.weight, state["speech_embedding.weight"])


def test_shape_inferred_without_blank_qwen_config(tmp_path: Path) -> None:
    write_cosyvoice2_dir(tmp_path / "cv2", blank_config=False, heads=1, kv_heads=1)  # head size 64
    cfg = import_cosyvoice2_llm(tmp_path / "cv2").sections["voice_lm"]
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size) == (2, 1, 1, 128)


def test_errors_name_keys_and_files(tmp_path: Path) -> None:
    _, state = write_cosyvoice2_dir(tmp_path / "cv2")
    bad = dict(state)
    bad["llm.model.model.layers.0.mlp.upproj.weight"] = bad.pop("llm.model.model.layers.0.mlp.up_proj.weight")
    torch.save(bad, tmp_path / "cv2" / "llm.pt")
    with pytest.raises(ForeignCheckpointError, match="body.layers.0.mlp.upproj.weight"):
        import_cosyvoice2_llm(tmp_path / "cv2")
    bad = dict(state, **{"llm_decoder.weight": state["llm_decoder.weight"][:100]})
    torch.save(bad, tmp_path / "cv2" / "llm.pt")
    with pytest.raises(ForeignCheckpointError, match=r"decoder.weight \(file \(100, 64\)"):
        import_cosyvoice2_llm(tmp_path / "cv2")
    bad = dict(state, **{"criterion_extra.weight": torch.ones(1)})
    torch.save(bad, tmp_path / "cv2" / "llm.pt")
    with pytest.raises(ForeignCheckpointError, match="criterion_extra.weight"):
        import_cosyvoice2_llm(tmp_path / "cv2")
    data = (tmp_path / "cv2" / "llm.pt").read_bytes()
    (tmp_path / "cv2" / "llm.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(ForeignCheckpointError, match="llm.pt"):
        import_cosyvoice2_llm(tmp_path / "cv2")


def test_full_size_release_shapes_match_minmo_7b(tmp_path: Path) -> None:
    """The released yaml + Qwen2.5-0.5B config give minmo-7b's voice_lm section, and the
    module has the documented parameter count (docs/checkpoints.md)."""
    directory = tmp_path / "cv2"
    (directory / "CosyVoice-BlankEN").mkdir(parents=True)
    (directory / "cosyvoice2.yaml").write_text(COSYVOICE2_YAML.format(**FULL))
    (directory / "CosyVoice-BlankEN" / "config.json").write_text(json.dumps(dict(
        QWEN_BLANK, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        vocab_size=151936)))
    cfg = voice_lm_config(directory)
    ref = load_model_config("minmo-7b").voice_lm
    for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "rope_theta", "speech_vocab", "mix_ratio", "top_p", "top_k", "ras_window"):
        assert getattr(cfg, field) == getattr(ref, field), field
    with torch.device("meta"):
        lm = VoiceTokenLM(cfg)
    params = sum(p.numel() for p in lm.parameters())
    # Qwen2.5-0.5B body without its text embedding (357,898,112) + speech_embedding and
    # llm_decoder (6564 x 896 each, + 6564 bias) + llm_embedding (2 x 896) + the 1-row stub
    assert params == 357_898_112 + 2 * 6564 * 896 + 6564 + 2 * 896 + 896 == 369_670_052


def test_flow_and_hift_import(tmp_path: Path) -> None:
    write_cosyvoice2_dir(tmp_path / "cv2")
    flow = import_cosyvoice2_flow(tmp_path / "cv2")
    module = ChunkFlowMatching(flow.sections["flow"])
    module.load_state_dict(flow.tensors, strict=True)
    saved = torch.load(tmp_path / "cv2" / "flow.pt", weights_only=True)
    assert torch.equal(module.decoder.estimator.final_proj.weight, saved["decoder.estimator.final_proj.weight"])
    hift = import_cosyvoice2_hift(tmp_path / "cv2")
    assert hift.sections["vocoder"].base_channels == 16 and hift.sections["vocoder"].f0_channels == 16
    HiFTVocoder(hift.sections["vocoder"]).load_state_dict(hift.tensors, strict=True)
    # a renamed flow key and a truncated hift.pt are named
    key = "encoder.encoders.0.self_attn.linear_q.weight"
    saved["encoder.encoders.0.self_attn.linear_qq.weight"] = saved.pop(key)
    torch.save(saved, tmp_path / "cv2" / "flow.pt")
    with pytest.raises(ForeignCheckpointError, match="linear_qq.weight"):
        import_cosyvoice2_flow(tmp_path / "cv2")
    data = (tmp_path / "cv2" / "hift.pt").read_bytes()
    (tmp_path / "cv2" / "hift.pt").write_bytes(data[:-200])
    with pytest.raises(ForeignCheckpointError, match="hift.pt"):
        import_cosyvoice2_hift(tmp_path / "cv2")


def test_full_size_flow_and_hift_shapes_match_minmo_7b(tmp_path: Path) -> None:
    """The released yaml gives minmo-7b's flow/HiFT shapes; the flow has the release's 1121
    tensors (docs/checkpoints.md)."""
    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "cosyvoice2.yaml").write_text(COSYVOICE2_YAML.format(**FULL))
    base = load_model_config("minmo-7b")
    flow, hift = flow_config(tmp_path / "cv2", base.flow), hift_config(tmp_path / "cv2", base.vocoder)
    assert flow == base.flow and hift == base.vocoder
    with torch.device("meta"):
        flow_sd, hift_sd = ChunkFlowMatching(flow).state_dict(), HiFTVocoder(hift).state_dict()
    assert len(flow_sd) == 1121 and sum(v.numel() for v in flow_sd.values()) == 112_549_360
    assert sum(v.numel() for v in hift_sd.values()) == 20_821_295
