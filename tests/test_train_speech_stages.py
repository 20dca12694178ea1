"""The speech-generation stages (speech_tokenizer, flow, vocoder) through the training loop."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minmo.checkpoints import load_tensors
from minmo.config import ConfigError, DataConfig, FlowConfig, OptimConfig, SpeechTokenizerConfig, TrainConfig
from minmo.models.flow import ChunkFlowMatching
from minmo.training.checkpointing import seed_everything
from minmo.training.loop import train
from minmo.training.stages import get_stage
from minmo.training.toydata import write_toy_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("toy"), num_examples=4, seconds=0.75)


def _cfg(stage, out, manifests, steps, lr=3e-3, batch=4, **options):
    return TrainConfig(stage=stage, output_dir=str(out), log_every=1, save_every=steps,
                       keep_last=1, progress=False, seed=0, stage_options=options,
                       data=DataConfig(train=[str(m) for m in manifests], batch_size=batch),
                       optim=OptimConfig(lr=lr, warmup_steps=1, max_steps=steps, grad_clip=5.0))


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _final_ckpt(out, step):
    return out / "checkpoints" / f"step_{step:08d}"


def test_stages_registered():
    for name in ("speech_tokenizer", "flow", "vocoder", "speaker"):
        assert get_stage(name).build_model is not None


def test_tokenizer_then_flow(corpus, tmp_path):
    tok = train(_cfg("speech_tokenizer", tmp_path / "tok", [corpus["asr"]], 8))
    assert all(torch.isfinite(torch.tensor(tok.losses)))
    assert tok.losses[-1] < tok.losses[0]
    ckpt = _final_ckpt(tmp_path / "tok", 8)
    assert (ckpt / "trainable.safetensors").is_file()

    flow = train(_cfg("flow", tmp_path / "flow", [corpus["asr"]], 6, tokenizer=str(ckpt),
                      max_tokens=20, voices="all"))  # the toy corpus has no assistant speech
    assert all(torch.isfinite(torch.tensor(flow.losses)))
    trained = load_tensors(_final_ckpt(tmp_path / "flow", 6) / "trainable.safetensors")
    seed_everything(0)  # the loop's seed before it builds the model: the initial weights
    init = dict(ChunkFlowMatching(FlowConfig()).named_parameters())
    assert trained.keys() == init.keys()
    assert any(not torch.equal(init[k], v) for k, v in trained.items())


def test_vocoder_gan_with_reconstruction_warmup(corpus, tmp_path):
    out = tmp_path / "voc"
    res = train(_cfg("vocoder", out, [corpus["asr"]], 4, lr=2e-3, batch=2,
                     reconstruction_steps=2, frames=16))
    assert all(torch.isfinite(torch.tensor(res.losses)))
    lines = _metrics(out)
    assert "grad_norm_discriminator" not in lines[0]  # warm-up: generator only
    assert {"grad_norm_generator", "grad_norm_discriminator", "d_loss"} <= set(lines[-1])
    ckpt = _final_ckpt(out, 4)
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert set(saved) == {"generator", "discriminator"}
    tensors = load_tensors(ckpt / "trainable.safetensors")
    assert any(k.startswith("generator.") for k in tensors)
    assert any(k.startswith("discriminator.") for k in tensors)


def test_unknown_stage_option_is_clear(corpus, tmp_path):
    with pytest.raises(ConfigError, match="stage_options"):
        train(_cfg("vocoder", tmp_path / "bad", [corpus["asr"]], 1, warmup=3))


def test_shapes_come_from_the_model_config_and_options_apply(corpus, tmp_path):
    """``model:`` picks the speech sections' shapes; ``disc_lr`` sets the discriminator's lr;
    ``voices: assistant`` keeps only the assistant's speech (the toy corpus has none: a clear error)."""
    import yaml

    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text(yaml.safe_dump({"name": "narrow", "vocoder": {"base_channels": 16},
                                          "flow": {"encoder_dim": 32, "estimator_channels": 32}}))
    cfg = _cfg("vocoder", tmp_path / "voc", [corpus["asr"]], 1, lr=2e-3, batch=2, frames=16, disc_lr=1e-4)
    cfg.model = str(model_yaml)
    stage = get_stage("vocoder")
    gan = stage.build_model(cfg)
    assert gan.generator.cfg.base_channels == 16 and gan.cfg.disc_channels == 8
    opts = stage.build_optimizers(gan, cfg.optim)
    assert opts["generator"].param_groups[0]["lr"] == 2e-3 and opts["discriminator"].param_groups[0]["lr"] == 1e-4
    flow_cfg = _cfg("flow", tmp_path / "flow", [corpus["asr"]], 1)
    flow_cfg.model = str(model_yaml)
    assert get_stage("flow").build_model(flow_cfg).cfg.encoder_dim == 32
    with pytest.raises(ConfigError, match="voices: assistant"):
        train(_cfg("flow", tmp_path / "f2", [corpus["asr"]], 1, voices="assistant"))
    with pytest.raises(ConfigError, match="only minmo's own"):
        onnx_cfg = _cfg("speech_tokenizer", tmp_path / "t", [corpus["asr"]], 1)
        onnx_yaml = tmp_path / "onnx.yaml"
        onnx_yaml.write_text(yaml.safe_dump({"name": "o", "speech_tokenizer": {"kind": "onnx", "onnx_path": "x.onnx"}}))
        onnx_cfg.model = str(onnx_yaml)
        get_stage("speech_tokenizer").build_model(onnx_cfg)


def test_max_minutes_checkpoints_and_a_rerun_continues_exactly(corpus, tmp_path):
    """A budget already spent after one step stops there with a checkpoint; running again with
    it does nothing; without a budget the run resumes and ends where an uninterrupted run ends."""
    whole = train(_cfg("speech_tokenizer", tmp_path / "whole", [corpus["asr"]], 4))
    cut = _cfg("speech_tokenizer", tmp_path / "cut", [corpus["asr"]], 4)
    cut.max_minutes = 1e-9
    first = train(cut)
    assert first.steps == 1 and (_final_ckpt(tmp_path / "cut", 1) / "trainable.safetensors").is_file()
    again = train(cut)  # the budget counts over resumes: already spent, nothing more
    assert again.steps == 1 and again.losses == []
    cut.max_minutes = 0.0
    rest = train(cut)
    assert rest.steps == 4 and rest.resumed_from is not None
    a = load_tensors(_final_ckpt(tmp_path / "whole", 4) / "trainable.safetensors")
    b = load_tensors(_final_ckpt(tmp_path / "cut", 4) / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.losses[1:] == rest.losses


def test_speech_stages_validate_on_data_valid(corpus, tmp_path):
    """``data.valid`` gives the speech stages a validation pass: the vocoder is scored on its
    reconstruction terms (no discriminator), on the same crops every pass."""
    cfg = _cfg("vocoder", tmp_path / "voc", [corpus["asr"]], 4, lr=0.0, batch=2, frames=16,
               reconstruction_steps=10)
    cfg.data.valid = [str(corpus["asr"])]
    cfg.valid_every = 2
    train(cfg)
    lines = [x for x in _metrics(tmp_path / "voc") if "valid_loss" in x]
    assert [x["step"] for x in lines] == [2, 4]
    assert "valid_mel_l1" in lines[0] and "valid_gen_adv" not in lines[0]
    assert lines[0]["valid_loss"] == lines[1]["valid_loss"]  # lr 0: same weights, same draws
    cfg = _cfg("speech_tokenizer", tmp_path / "tok", [corpus["asr"]], 2)
    cfg.data.valid = [str(corpus["asr"])]
    train(cfg)
    assert math.isfinite(_metrics(tmp_path / "tok")[-1]["valid_ctc_loss"])


def test_spec_augment_masks_within_the_valid_frames():
    from minmo.training.speech_stages import spec_augment

    torch.manual_seed(0)
    feats = torch.randn(2, 300, 80)
    lens = torch.tensor([300, 120])
    out = spec_augment(feats.clone(), lens, max_bins=10, max_frames=10)
    assert torch.equal(out[1, 120:], feats[1, 120:])  # padding untouched
    for b, n in enumerate(lens.tolist()):
        changed = out[b, :n] != feats[b, :n]
        assert changed.any()
        # masked cells hold the utterance mean; at most 2 x 10 bins and 10 frames per second masked
        assert torch.allclose(out[b, :n][changed], feats[b, :n].mean().expand(int(changed.sum())))
        bands = changed.all(0).sum() if changed.all(0).any() else 0
        assert bands <= 20
        rows = (changed.sum(1) == 80).sum()
        assert rows <= 10 * max(1, n // 100)


def test_tokenizer_training_batches_are_augmented_and_validation_ones_are_not(corpus):
    from minmo.training.speech_stages import _tokenizer_inputs, tokenizer_batch

    cfg = _cfg("speech_tokenizer", "unused", [corpus["asr"]], 1)
    items, train_collate = _tokenizer_inputs(cfg, [str(corpus["asr"])], "data.train")
    _, valid_collate = _tokenizer_inputs(cfg, [str(corpus["asr"])], "data.valid")
    plain = tokenizer_batch(items)["feats"]
    torch.manual_seed(0)
    assert not torch.equal(train_collate(items)["feats"], plain)
    assert torch.equal(valid_collate(items)["feats"], plain)
    cfg.stage_options = {"spec_augment": False}
    _, off = _tokenizer_inputs(cfg, [str(corpus["asr"])], "data.train")
    assert torch.equal(off(items)["feats"], plain)
    cfg.stage_options = {"spec_augment": "no"}
    with pytest.raises(ConfigError, match="spec_augment"):
        _tokenizer_inputs(cfg, [str(corpus["asr"])], "data.train")


def test_tokenizer_batches_carry_the_features_of_the_tokenizer_kind(corpus):
    from minmo.audio.features import WhisperLogMelFrontend
    from minmo.config import SpeechTokenizerConfig
    from minmo.training.speech_stages import load_speech_items, tokenizer_batch

    items = load_speech_items([corpus["asr"]], rates=(16000,))[:3]
    whisper = tokenizer_batch(items, tok_cfg=SpeechTokenizerConfig(kind="whisper"))
    frontend = WhisperLogMelFrontend(80)
    assert whisper["feat_lens"].tolist() == [frontend.num_frames(len(it["w16"])) for it in items]
    first = frontend.features(items[0]["w16"][None])[0][:-2]  # the last frames may see the padding
    torch.testing.assert_close(whisper["feats"][0, : len(first)], first)
    assert not torch.equal(tokenizer_batch(items)["feats"][0, :10], whisper["feats"][0, :10])  # tiny: fbank


def test_speech_items_load_only_the_voices_and_rates_asked_for(corpus):
    from minmo.training.speech_stages import load_speech_items

    both = load_speech_items([corpus["asr"]])
    assert both and all(set(it) >= {"w16", "w24"} for it in both)
    only16 = load_speech_items([corpus["asr"]], rates=(16000,))
    assert all("w24" not in it and torch.equal(it["w16"], b["w16"]) for it, b in zip(only16, both))
    assert load_speech_items([corpus["asr"]], voices="assistant") == []  # the toy corpus: ASR speakers


def test_flow_trains_other_voices_as_no_speaker():
    from minmo.models.speaker import assistant_speaker
    from minmo.training.speech_stages import flow_batch

    torch.manual_seed(0)
    items = [{"voice": v, "tokens": torch.randint(0, 6561, (12,)), "mel": torch.randn(80, 24)}
             for v in ("assistant", "en-us+f3-p45-s170", "assistant")]
    spk = assistant_speaker()
    emb = flow_batch(items, spk)["spk_emb"]
    assert torch.equal(emb[0], spk[0]) and torch.equal(emb[2], spk[0])
    assert not emb[1].any()
    # the all-zero embedding is the condition classifier-free guidance drops to: zero after
    # the projection, while the assistant's is not
    flow = ChunkFlowMatching(FlowConfig())
    projected = flow.project_speaker(emb)
    assert not projected[1].any() and projected[0].abs().sum() > 0


def test_speed_perturbation_scales_training_utterances_only(corpus):
    from minmo.training.speech_stages import _tokenizer_inputs, speed_perturb, tokenizer_batch

    wave = torch.randn(16000)
    assert abs(len(speed_perturb(wave, 1.1)) - 16000 / 1.1) <= 1
    assert abs(len(speed_perturb(wave, 0.9)) - 16000 / 0.9) <= 1
    assert speed_perturb(wave, 1.0) is wave
    cfg = _cfg("speech_tokenizer", "unused", [corpus["asr"]], 1, spec_augment=False, speed_perturb=[0.8])
    items, train_collate = _tokenizer_inputs(cfg, [str(corpus["asr"])], "data.train")
    _, valid_collate = _tokenizer_inputs(cfg, [str(corpus["asr"])], "data.valid")
    plain = tokenizer_batch(items)
    slow = train_collate(items)
    assert (slow["feat_lens"] > plain["feat_lens"]).all()  # 0.8x speed: 1.25x the frames
    assert torch.equal(slow["ctc_targets"], plain["ctc_targets"])
    assert torch.equal(valid_collate(items)["feats"], plain["feats"])
    for bad in ([3.0], 0.9, [True]):
        cfg.stage_options = {"speed_perturb": bad}
        with pytest.raises(ConfigError, match="speed_perturb"):
            _tokenizer_inputs(cfg, [str(corpus["asr"])], "data.train")


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Three toy voices (pitch and spectral tilt per speaker) at two speaking rates each, as
    the synthetic corpus names them: train (5 utterances each), valid (2 each, held-out texts)."""
    from test_speech_speaker import _voice

    from minmo.audio.io import save_audio

    root = tmp_path_factory.mktemp("voices")
    out = {}
    for split, utts in (("train", range(5)), ("valid", range(5, 7))):
        rows = []
        for s in range(3):
            for u in utts:
                wav = save_audio(root / f"{split}-{s}-{u}.wav", _voice(s, u, seconds=0.8).numpy(), 16000)
                rows.append({"id": f"{split}-{s}-{u}", "task": "asr", "audio": wav.name, "text": f"word {u}",
                             "language": "en", "duration": 0.8, "speaker": f"toy{s}-p50-s{130 + 40 * (u % 2)}"})
        out[split] = root / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_speaker_stage_learns_the_voices_and_its_checkpoint_embeds(voices, tmp_path):
    from minmo.models.speaker import load_speaker_encoder
    from minmo.training.speech_stages import _speaker_inputs, speaker_label

    assert speaker_label("toy1-p50-s170", r"(.+)-s\d+") == "toy1-p50"
    assert speaker_label("assistant", r"(.+)-s\d+") == "assistant"
    cfg = _cfg("speaker", tmp_path / "spk", [voices["train"]], 40, lr=3e-3, batch=6,
               seconds=0.5, speaker_pattern=r"(.+)-s\d+")
    cfg.data.valid, cfg.valid_every = [str(voices["valid"])], 40
    items, _ = _speaker_inputs(cfg, [str(voices["train"])], "data.train")
    assert sorted({it["speaker_id"] for it in items}) == [0, 1, 2]  # the rate suffix is not a speaker
    res = train(cfg)
    lines = _metrics(tmp_path / "spk")
    assert lines[-1]["valid_speaker_acc"] >= 0.8, lines[-1]
    assert res.losses[-1] < res.losses[0]
    enc = load_speaker_encoder(_final_ckpt(tmp_path / "spk", 40))  # head size from the file
    assert enc.classifier.shape[0] == 3
    valid = _speaker_inputs(cfg, [str(voices["valid"])], "data.valid")[0]
    emb = torch.nn.functional.normalize(torch.stack([enc.embed_wave(it["w16"]) for it in valid]), dim=-1)
    ids = torch.tensor([it["speaker_id"] for it in valid])
    sim, same = emb @ emb.t(), ids[:, None] == ids[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.2

    flow_cfg = _cfg("flow", "unused", [voices["valid"]], 1, max_tokens=20, voices="all",
                    speaker_encoder=str(_final_ckpt(tmp_path / "spk", 40)))
    from minmo.training.speech_stages import _flow_inputs

    flow_items, collate = _flow_inputs(flow_cfg, [str(voices["valid"])], "data.valid")
    batch = collate(flow_items)
    # every voice trains with its own utterance's embedding now, not the "no speaker" zeros
    torch.testing.assert_close(batch["spk_emb"], torch.stack([enc.embed_wave(it["w16"]) for it in valid]))


def test_speaker_stage_errors_name_the_fix(voices, corpus, tmp_path):
    from minmo.models.speaker import load_speaker_encoder

    with pytest.raises(ConfigError, match="speaker_pattern"):
        train(_cfg("speaker", tmp_path / "a", [voices["train"]], 1, speaker_pattern="no group"))
    with pytest.raises(ConfigError, match="at least two"):  # the toy corpus names no speakers
        train(_cfg("speaker", tmp_path / "b", [corpus["asr"]], 1))
    with pytest.raises(ConfigError, match="speaker_encoder"):
        train(_cfg("flow", tmp_path / "c", [voices["train"]], 1, voices="all",
                   speaker_encoder=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="voices: all"):
        train(_cfg("flow", tmp_path / "d", [voices["train"]], 1, speaker_encoder=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="speaker"):
        load_speaker_encoder(tmp_path / "nowhere.safetensors")


def test_a_tokenizer_of_another_shape_is_a_config_error(tmp_path):
    from safetensors.torch import save_file

    from minmo.config import SpeechTokenizerConfig
    from minmo.models.speech_tokenizer import SpeechTokenizer
    from minmo.training.speech_stages import load_tokenizer

    wide = SpeechTokenizer(SpeechTokenizerConfig(d_model=128, ffn_dim=256))
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, tmp_path / "tok.safetensors")
    assert load_tokenizer(tmp_path / "tok.safetensors", SpeechTokenizerConfig(d_model=128, ffn_dim=256))
    with pytest.raises(ConfigError, match="size mismatch.*the config the tokenizer trained with"):
        load_tokenizer(tmp_path / "tok.safetensors")  # the tiny shape


def _assistant_manifest(corpus, tmp_path):
    """The toy corpus's utterances as the assistant's speech (tts rows with ``target_audio``)."""
    rows = [json.loads(x) for x in corpus["asr"].read_text().splitlines()]
    path = corpus["asr"].parent / "assistant_tts.jsonl"
    path.write_text("".join(json.dumps({"id": f"tts-{r['id']}", "task": "tts", "text": r["text"],
                                        "target_audio": r["audio"]}) + "\n" for r in rows))
    return path


def test_vocoder_learns_from_the_flows_mels(corpus, tmp_path):
    """``flow`` + ``tokenizer``: the generator's input is the flow's mel of the utterance's
    tokens (as one utterance alone gives it), cropped where the audio is cropped."""
    from minmo.models.speaker import assistant_speaker
    from minmo.training.speech_stages import (_vocoder_inputs, load_flow, load_speech_items, load_tokenizer,
                                              vocoder_batch)

    train(_cfg("speech_tokenizer", tmp_path / "tok", [corpus["asr"]], 1))
    train(_cfg("flow", tmp_path / "flow", [corpus["asr"]], 1, tokenizer=str(_final_ckpt(tmp_path / "tok", 1)),
               max_tokens=20, voices="all"))
    opts = dict(flow=str(_final_ckpt(tmp_path / "flow", 1)), tokenizer=str(_final_ckpt(tmp_path / "tok", 1)))
    manifest = _assistant_manifest(corpus, tmp_path)
    cfg = _cfg("vocoder", tmp_path / "voc", [manifest], 2, lr=1e-3, batch=2, frames=16,
               reconstruction_steps=10, voices="assistant", **opts)
    items, _collate = _vocoder_inputs(cfg, cfg.data.train, "data.train")
    tok, flow = load_tokenizer(opts["tokenizer"], SpeechTokenizerConfig()), load_flow(opts["flow"], FlowConfig())
    alone = load_speech_items([manifest], "assistant", (16000,))
    assert [it["id"] for it in alone] == [it["id"] for it in items] and len(items) == 4
    for it, a in zip(items, alone):  # each utterance alone, as the runtime synthesises it
        tokens, = tok.tokenize_waves([a["w16"]])
        with torch.no_grad():
            mel = flow.synthesize(tokens[None], assistant_speaker(192))[0]
        assert it["mel_in"].shape == mel.shape == (80, 2 * len(tokens))
        torch.testing.assert_close(it["mel_in"], mel, atol=1e-4, rtol=1e-4)
    torch.manual_seed(3)
    batch = vocoder_batch(items[:1], frames=16)
    torch.manual_seed(3)  # the same crop start
    s = int(torch.randint(0, items[0]["w24"].shape[0] // 480 - 16 + 1, ()))
    assert batch["mel"].shape == (1, 80, 16)
    torch.testing.assert_close(batch["mel"][0], items[0]["mel_in"][:, s:s + 16])
    torch.testing.assert_close(batch["wave"][0], items[0]["w24"][480 * s: 480 * (s + 16)])
    res = train(cfg)
    assert res.steps == 2 and all(math.isfinite(x) for x in res.losses)
    with pytest.raises(ConfigError, match="both flow and tokenizer"):
        train(_cfg("vocoder", tmp_path / "v2", [manifest], 1, voices="assistant", flow=opts["flow"]))
    with pytest.raises(ConfigError, match="voices: assistant"):
        train(_cfg("vocoder", tmp_path / "v3", [manifest], 1, **opts))
    with pytest.raises(ConfigError, match="not found"):
        train(_cfg("vocoder", tmp_path / "v4", [manifest], 1, voices="assistant",
                   flow=str(tmp_path / "nothing"), tokenizer=opts["tokenizer"]))
