"""``minmo convert``: miniature releases -> a minmo checkpoint directory that builds and loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minmo.cli.main import main
from minmo.config import load_model_config
from minmo.models.builders import build_model
from test_ckpt_common import write_qwen2_dir
from test_ckpt_cosyvoice2 import write_cosyvoice2_dir
from test_ckpt_sensevoice import write_sensevoice_dir


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")
    write_sensevoice_dir(root / "SenseVoiceSmall")
    write_qwen2_dir(root / "Qwen2.5-tiny", tie=True)
    write_cosyvoice2_dir(root / "CosyVoice2-0.5B", onnx=True)
    return {"sensevoice": root / "SenseVoiceSmall", "qwen": root / "Qwen2.5-tiny",
            "cosyvoice2": root / "CosyVoice2-0.5B"}


def test_convert_all_parts_and_build(tmp_path: Path, releases: dict[str, Path], capsys) -> None:
    out = tmp_path / "minmo-init"
    rc = main(["convert", str(out), "--base", "tiny", "--name", "tiny-real",
               "--sensevoice", str(releases["sensevoice"]), "--llm-hf", str(releases["qwen"]),
               "--cosyvoice2", str(releases["cosyvoice2"])])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "dropped llm.model.lm_head.weight" in printed and "fresh (trained by MinMo's stages)" in printed
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "model.safetensors", "tokenizer",
                                                "flow.safetensors", "vocoder.safetensors",
                                                "am.mvn", "campplus.onnx", "speech_tokenizer_v2.onnx",
                                                "convert.json", "chn_jpn_yue_eng_ko_spectok.bpe.model"}
    assert "campplus.onnx: ran with onnxruntime (1 s probe -> 192-d embedding)" in printed
    assert "speech_tokenizer_v2.onnx: ran with onnxruntime (1 s probe -> 25 tokens" in printed
    report = json.loads((out / "convert.json").read_text())
    assert report["fresh_modules"] == ["duplex", "input_projector", "output_projector"]
    cfg = load_model_config(out / "config.yaml")
    assert cfg.name == "tiny-real" and cfg.frontend.cmvn_file == str(out / "am.mvn")
    assert cfg.llm.tokenizer == str(out / "tokenizer") and cfg.speaker.kind == "onnx"
    assert (cfg.speech_tokenizer.kind, cfg.speech_tokenizer.onnx_path) == ("onnx", str(out / "speech_tokenizer_v2.onnx"))
    assert (cfg.speaker.onnx_path) == str(out / "campplus.onnx")
    assert cfg.flow.path == str(out / "flow.safetensors") and cfg.flow.encoder_dim == 32
    from minmo.checkpoints import load_file_into
    from minmo.models.flow import ChunkFlowMatching
    from minmo.models.vocoder import HiFTVocoder

    load_file_into(ChunkFlowMatching(cfg.flow), cfg.flow.path)  # strict: every key
    load_file_into(HiFTVocoder(cfg.vocoder), cfg.vocoder.path)
    model = build_model(cfg)
    tensors = load_file(str(out / "model.safetensors"))
    state = model.state_dict()
    assert set(tensors) <= set(state)
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v)
    # the LLM slot now computes what the released Qwen2 directory computes
    from transformers import Qwen2ForCausalLM

    ref = Qwen2ForCausalLM.from_pretrained(str(releases["qwen"]), dtype=torch.float32).eval()
    ids = torch.tensor([model.tokenizer.encode("hello world")])
    with torch.no_grad():
        ours = model.llm.logits(model.llm(model.llm.embed(ids)).hidden)[..., :320]
        torch.testing.assert_close(ours, ref(ids).logits, rtol=1e-5, atol=1e-5)
    assert len(model.tokenizer) == 302 and model.llm.vocab_size == 320


def test_convert_refuses_existing_out_and_bad_sources(tmp_path: Path, releases: dict[str, Path],
                                                      capsys) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    assert main(["convert", str(out), "--base", "tiny", "--llm-hf", str(releases["qwen"])]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "x"), "--base", "tiny"]) == 1
    assert "nothing to convert" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "y"), "--base", "tiny",
                 "--sensevoice", str(tmp_path / "nowhere")]) == 1
    assert "model.pt: missing" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_convert_llm_reference_keeps_weights_in_place(tmp_path: Path, releases: dict[str, Path]) -> None:
    out = tmp_path / "ref"
    assert main(["convert", str(out), "--base", "tiny", "--llm-hf", str(releases["qwen"]),
                 "--llm-reference"]) == 0
    cfg = load_model_config(out / "config.yaml")
    assert cfg.llm.path == str(releases["qwen"].resolve()) and cfg.llm.tokenizer == "auto"
    assert not (out / "model.safetensors").exists()
    model = build_model(cfg)  # weights stream in from the referenced directory
    ids = torch.tensor([[5, 6, 7]])
    from transformers import Qwen2ForCausalLM

    ref = Qwen2ForCausalLM.from_pretrained(str(releases["qwen"]), dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model.llm.logits(model.llm(model.llm.embed(ids)).hidden)
        assert torch.equal(ours, ref(ids).logits)


def test_convert_names_a_truncated_onnx_model(tmp_path: Path, releases: dict[str, Path], capsys) -> None:
    import shutil

    broken = tmp_path / "CosyVoice2-0.5B"
    shutil.copytree(releases["cosyvoice2"], broken)
    data = (broken / "speech_tokenizer_v2.onnx").read_bytes()
    (broken / "speech_tokenizer_v2.onnx").write_bytes(data[: len(data) // 2])
    assert main(["convert", str(tmp_path / "out"), "--base", "tiny", "--cosyvoice2", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "speech_tokenizer_v2.onnx: not a loadable ONNX model" in err
    assert not (tmp_path / "out").exists()
