"""SenseVoice-Small FunASR directory -> minmo's encoder (+ CTC head, front end).

The parity test runs FunASR itself (``funasr`` on PyPI) in a separate virtual environment
``$MINMO_FUNASR_PYTHON`` (default ``/tmp/funasr-venv/bin/python``; create it with
``python3 -m venv /tmp/funasr-venv && /tmp/funasr-venv/bin/pip install torch==2.13.0 funasr``)
and is skipped when that interpreter is absent: FunASR is too heavy for minmo's own venv.
"""

from __future__ import annotations

import os
import struct
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from minmo.checkpoints.foreign_common import ForeignCheckpointError
from minmo.checkpoints.sensevoice import (
    SentencePieceVocab,
    ctc_greedy_decode,
    import_sensevoice,
)
from minmo.config import EncoderConfig
from minmo.models.encoder import SenseVoiceEncoder

FUNASR_PYTHON = Path(os.environ.get("MINMO_FUNASR_PYTHON", "/tmp/funasr-venv/bin/python"))

CONFIG_YAML = """\
encoder: SenseVoiceEncoderSmall
encoder_conf:
    output_size: {d}
    attention_heads: 4
    linear_units: {ffn}
    num_blocks: {blocks}
    tp_blocks: {tp}
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm


model: SenseVoiceSmall
model_conf:
    length_normalized_loss: true
    sos: 1
    eos: 2
    ignore_id: -1

tokenizer: SentencepiecesTokenizer
tokenizer_conf:
  bpemodel: null
  unk_symbol: <unk>
  split_with_space: true

frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
    cmvn_file: null


dataset: SenseVoiceCTCDataset
dataset_conf:
  index_ds: IndexDSJsonl
  batch_sampler: EspnetStyleBatchSampler
  data_split_num: 32
  batch_type: token
  batch_size: 14000
  max_token_length: 2000
  min_token_length: 60
  max_source_length: 2000
  min_source_length: 60
  max_target_length: 200
  min_target_length: 0
  shuffle: true
  num_workers: 4
  sos: ${{model_conf.sos}}
  eos: ${{model_conf.eos}}
  IndexDSJsonl: IndexDSJsonl
  retry: 20

train_conf:
  accum_grad: 1
  grad_clip: 5
  max_epoch: 20
  keep_nbest_models: 10
  avg_nbest_model: 10
  log_interval: 100
  resume: true
  validate_interval: 10000
  save_checkpoint_interval: 10000

optim: adamw
optim_conf:
  lr: 0.00002
scheduler: warmuplr
scheduler_conf:
  warmup_steps: 25000

specaug: SpecAugLFR
specaug_conf:
  apply_time_warp: false
  time_warp_window: 5
  time_warp_mode: bicubic
  apply_freq_mask: true
  freq_mask_width_range:
  - 0
  - 30
  lfr_rate: 6
  num_freq_mask: 1
  apply_time_mask: true
  time_mask_width_range:
  - 0
  - 12
  num_time_mask: 1
"""
SMALL = dict(d=64, ffn=128, blocks=3, tp=2)
VOCAB = 40


def write_am_mvn(path: Path, dim: int = 560, seed: int = 0) -> None:
    """A Kaldi nnet-text CMVN file like SenseVoice's ``am.mvn``."""
    gen = torch.Generator().manual_seed(seed)
    shift = (-8 - torch.rand(dim, generator=gen)).tolist()
    scale = (0.1 + 0.1 * torch.rand(dim, generator=gen)).tolist()
    fmt = lambda v: " ".join(f"{x:.6f}" for x in v)  # noqa: E731
    path.write_text(f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n"
                    f"<LearnRateCoef> 0 [ {fmt(shift)} ]\n<Rescale> {dim} {dim}\n"
                    f"<LearnRateCoef> 0 [ {fmt(scale)} ]\n</Nnet>\n")


def write_spm_model(path: Path, pieces: list[tuple[str, int]]) -> None:
    """A SentencePiece ``ModelProto`` with the given (piece, type) table (field 1)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
            n >>= 7
            if not n:
                return bytes(out)

    body = bytearray()
    for text, kind in pieces:
        raw = text.encode()
        sub = b"\x0a" + varint(len(raw)) + raw + b"\x15" + struct.pack("<f", -1.0) + b"\x18" + varint(kind)
        body += b"\x0a" + varint(len(sub)) + sub
    body += b"\x12\x02\x08\x01"  # a trainer_spec field, skipped by readers of the pieces
    path.write_bytes(bytes(body))


def write_sensevoice_dir(directory: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A SenseVoiceSmall release folder at toy size with FunASR's key names."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(CONFIG_YAML.format(**SMALL))
    cfg = EncoderConfig(d_model=SMALL["d"], num_heads=4, ffn_dim=SMALL["ffn"],
                        num_blocks=SMALL["blocks"], tp_blocks=SMALL["tp"], ctc_vocab=VOCAB)
    torch.manual_seed(seed)
    module = SenseVoiceEncoder(cfg)
    state = {}
    for k, v in module.state_dict().items():
        v = v + 0.05 * torch.randn_like(v)  # LayerNorms away from 1/0 too
        if k == "query_embed.weight":
            state["embed.weight"] = v
        elif k.startswith("ctc_lo."):
            state["ctc." + k] = v
        else:
            state["encoder." + k] = v
    torch.save(state, directory / "model.pt")
    write_am_mvn(directory / "am.mvn")
    pieces = [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("<|en|>", 4)]
    pieces += [("\u2581" + w, 1) for w in "hello world this is a test of the encoder".split()]
    pieces += [(chr(ord("a") + i), 1) for i in range(VOCAB - len(pieces))]
    write_spm_model(directory / "chn_jpn_yue_eng_ko_spectok.bpe.model", pieces)
    return state


def test_import_matches_funasr_layout(tmp_path: Path) -> None:
    state = write_sensevoice_dir(tmp_path / "sv")
    part = import_sensevoice(tmp_path / "sv")
    enc, fe = part.sections["encoder"], part.sections["frontend"]
    assert (enc.kind, enc.input_dim, enc.d_model, enc.num_blocks, enc.tp_blocks) == ("sensevoice", 560, 64, 3, 2)
    assert (enc.query_vocab, enc.ctc_vocab, enc.fsmn_kernel) == (16, VOCAB, 11)
    assert (fe.kind, fe.window, fe.lfr_m, fe.lfr_n) == ("sensevoice", "hamming", 7, 6)
    assert fe.cmvn_file.endswith("am.mvn") and set(part.files) == {"am.mvn", "chn_jpn_yue_eng_ko_spectok.bpe.model"}
    assert part.report.loaded == len(state)
    module = SenseVoiceEncoder(enc)
    module.load_state_dict(part.tensors, strict=True)
    assert torch.equal(module.encoders[1].self_attn.fsmn_block.weight,
                       state["encoder.encoders.1.self_attn.fsmn_block.weight"])


def test_renamed_key_and_wrong_shape_are_named(tmp_path: Path) -> None:
    state = write_sensevoice_dir(tmp_path / "sv")
    key = "encoder.encoders.0.feed_forward.w_1.weight"
    bad = dict(state)
    bad["encoder.encoders.0.feed_forward.w1.weight"] = bad.pop(key)
    torch.save(bad, tmp_path / "sv" / "model.pt")
    with pytest.raises(ForeignCheckpointError, match=r"encoders.0.feed_forward.w1.weight"):
        import_sensevoice(tmp_path / "sv")
    bad = dict(state)
    bad[key] = bad[key][:, :10]
    torch.save(bad, tmp_path / "sv" / "model.pt")
    with pytest.raises(ForeignCheckpointError, match=r"encoders.0.feed_forward.w_1.weight \(file"):
        import_sensevoice(tmp_path / "sv")


def test_truncated_model_and_unsupported_config_are_refused(tmp_path: Path) -> None:
    write_sensevoice_dir(tmp_path / "sv")
    cfg = tmp_path / "sv" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("sanm_shfit: 0", "sanm_shfit: 5"))
    with pytest.raises(ForeignCheckpointError, match="sanm_shfit: 5"):
        import_sensevoice(tmp_path / "sv")
    cfg.write_text(CONFIG_YAML.format(**SMALL))
    model = tmp_path / "sv" / "model.pt"
    model.write_bytes(model.read_bytes()[:5000])
    with pytest.raises(ForeignCheckpointError, match=str(model)):
        import_sensevoice(tmp_path / "sv")
    model.unlink()
    with pytest.raises(ForeignCheckpointError, match="model.pt: missing"):
        import_sensevoice(tmp_path / "sv")


def test_ctc_vocabulary_and_greedy_decode(tmp_path: Path) -> None:
    write_sensevoice_dir(tmp_path / "sv")
    vocab = SentencePieceVocab.load(tmp_path / "sv" / "chn_jpn_yue_eng_ko_spectok.bpe.model")
    assert len(vocab) == VOCAB and vocab.pieces[3] == "<|en|>"
    hello, world = vocab.pieces.index("\u2581hello"), vocab.pieces.index("\u2581world")
    frames = [3, 0, hello, hello, 0, 0, world, world, world, 0]
    logits = torch.nn.functional.one_hot(torch.tensor([frames]), VOCAB).float()
    ids = ctc_greedy_decode(logits, torch.tensor([len(frames)]))
    assert ids == [[3, hello, world]]
    assert vocab.decode(ids[0]) == "hello world"
    assert vocab.decode(ids[0], keep_special=True) == "<|en|> hello world"


FUNASR_REFERENCE = textwrap.dedent("""
    import sys, torch, yaml
    sys.modules.setdefault("torchaudio", None)
    from funasr.models.sense_voice.model import SenseVoiceSmall
    directory = sys.argv[1]
    conf = yaml.safe_load(open(directory + "/config.yaml"))
    torch.manual_seed(0)
    model = SenseVoiceSmall(input_size=560, vocab_size=int(sys.argv[2]), encoder=conf["encoder"],
                            encoder_conf=conf["encoder_conf"], **conf["model_conf"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(model.state_dict(), directory + "/model.pt")
    feats = torch.randn(2, 23, 560)
    lens = torch.tensor([23, 17])
    queries = model.embed(torch.tensor([[0, 1, 2, 15]])).repeat(2, 1, 1)
    with torch.no_grad():
        out, out_lens = model.encoder(torch.cat([queries, feats], 1), lens + 4)
        ctc = model.ctc.ctc_lo(out)
    torch.save({"feats": feats, "lens": lens, "out": out, "out_lens": out_lens, "ctc": ctc,
                "keys": sorted(model.state_dict())}, directory + "/reference.pt")
""")


@pytest.mark.skipif(not FUNASR_PYTHON.is_file(), reason=f"no FunASR venv at {FUNASR_PYTHON}")
def test_parity_with_funasr(tmp_path: Path) -> None:
    write_sensevoice_dir(tmp_path / "sv")  # config, am.mvn, tokenizer; model.pt replaced below
    subprocess.run([str(FUNASR_PYTHON), "-c", FUNASR_REFERENCE, str(tmp_path / "sv"), str(VOCAB)],
                   check=True, capture_output=True, timeout=300)
    ref = torch.load(tmp_path / "sv" / "reference.pt", weights_only=True)
    part = import_sensevoice(tmp_path / "sv")
    module = SenseVoiceEncoder(part.sections["encoder"]).eval()
    module.load_state_dict(part.tensors, strict=True)
    with torch.no_grad():
        out, out_lens = module(ref["feats"], ref["lens"])
        ctc = module.ctc_logits(out)
    assert torch.equal(out_lens, ref["out_lens"])
    diffs = []
    for b, n in enumerate(ref["out_lens"].tolist()):
        diffs.append((out[b, :n] - ref["out"][b, :n]).abs().max().item())
        diffs.append((ctc[b, :n] - ref["ctc"][b, :n]).abs().max().item())
    print(f"\n[funasr parity] max abs diff encoder/CTC: {max(diffs):.3g}")
    assert max(diffs) <= 1e-4
