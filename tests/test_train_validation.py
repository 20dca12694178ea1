"""Validation on ``data.valid`` during training: the logged ``valid_*`` values equal an
independent eval-mode pass over the same batches with the trained weights, and a run with
validation trains exactly like one without it (dropout on, so a disturbed RNG would show)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from minmo.cli.train import main as train_main
from minmo.config import DataConfig, OptimConfig, TrainConfig, load_model_config
from minmo.data.loader import build_loader
from minmo.models.builders import build_model
from minmo.training import checkpointing as ckpt
from minmo.training.loop import METRICS_FILE, train
from minmo.training.manifest_data import STAGE_TASKS
from minmo.training.toydata import write_toy_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    return write_toy_corpus(root / "train", num_examples=4), \
        write_toy_corpus(root / "valid", num_examples=5, seed=1)


def _model_cfg():
    cfg = load_model_config("tiny")
    cfg.projector = replace(cfg.projector, dropout=0.2)
    return cfg


def _run(out, train_manifest, valid_manifests, **kw):
    cfg = TrainConfig(stage="s2t_prealign", output_dir=str(out), seed=7,
                      data=DataConfig(train=[str(train_manifest)], valid=valid_manifests,
                                      batch_size=2, num_workers=0),
                      optim=OptimConfig(lr=3e-3, warmup_steps=1, max_steps=4),
                      log_every=1, save_every=4, progress=False, **kw)
    ckpt.seed_everything(cfg.seed)
    model_cfg = _model_cfg()
    model = build_model(model_cfg)
    return train(cfg, model=model, model_config=model_cfg), model, cfg


def _lines(out):
    return [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines()]


def test_validation_is_an_eval_pass_and_leaves_training_alone(corpus, tmp_path):
    (train_set, valid_set) = corpus
    plain, plain_model, _ = _run(tmp_path / "plain", train_set["asr"], [])
    result, model, cfg = _run(tmp_path / "valid", train_set["asr"], [str(valid_set["asr"])],
                              valid_every=2, valid_max_batches=2)

    # same training: losses and every trained parameter bit-identical
    assert result.losses == plain.losses
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for n, p in plain_model.named_parameters():
        if n in trained:
            assert torch.equal(p, trained[n]), n
    assert model.training  # back in train mode

    lines = _lines(tmp_path / "valid")
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert ["valid_loss" in x for x in lines] == [False, True, False, True]
    assert all("valid_loss" not in x for x in _lines(tmp_path / "plain"))
    last = lines[-1]
    # 5 rows, batch 2 -> 3 batches in file order, bounded to the first 2 (4 examples)
    assert last["valid_batches"] == 2 and last["valid_examples"] == 4
    assert lines[1]["valid_loss"] != last["valid_loss"]  # the model changed in between
    assert result.valid["valid_loss"] == last["valid_loss"]
    assert f"valid_loss={last['valid_loss']:.4f}" in result.summary()

    # independent pass: eval mode, no grad, mean over the first two batches in file order
    loader = build_loader(cfg.data, cfg.data.valid, model.frontend, model.tokenizer,
                          system_prompt=model.cfg.system_prompt, train=False,
                          tasks=STAGE_TASKS["s2t_prealign"])
    model.eval()
    losses, accs = [], []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == 2:
                break
            out = model(batch, losses=("text",))
            losses.append(float(out.loss))
            accs.append(out.metrics["text_acc"])
    assert last["valid_loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert last["valid_text_acc"] == pytest.approx(sum(accs) / 2, rel=1e-6)
    # the training-mode loss differs (dropout): the logged value is not a train-mode pass
    model.train()
    with torch.no_grad():
        train_mode = [float(model(b, losses=("text",)).loss) for b in list(loader)[:2]]
    assert not math.isclose(sum(train_mode) / 2, last["valid_loss"], rel_tol=1e-6)


def test_valid_every_zero_validates_only_at_the_end(corpus, tmp_path):
    train_set, valid_set = corpus
    result, _, _ = _run(tmp_path / "end", train_set["asr"], [str(valid_set["asr"])],
                        valid_max_batches=0)
    lines = _lines(tmp_path / "end")
    assert [("valid_loss" in x) for x in lines] == [False, False, False, True]
    assert lines[-1]["valid_batches"] == 3 and lines[-1]["valid_examples"] == 5
    assert math.isfinite(result.valid["valid_loss"])


def test_missing_valid_manifest_is_one_line(corpus, tmp_path, capsys):
    train_set, _ = corpus
    missing = tmp_path / "nope" / "valid.jsonl"
    rc = train_main(["configs/train/s2t_prealign.yaml", "init=null",
                     f"data.train=[{train_set['asr']}]", f"data.valid=[{missing}]",
                     "progress=false", f"output_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert str(missing) in err and "data.valid" in err


def test_speech_stage_validation_leaves_out_rows_without_speech_tokens(corpus, tmp_path):
    train_set, valid_set = corpus
    rows = [json.loads(x) for x in valid_set["tts"].read_text().splitlines()]
    rows[1] = {k: v for k, v in rows[1].items() if k != "speech_tokens"}
    rows[1]["target_audio"] = str(valid_set["tts"].parent / "wavs" / "u1.wav")
    manifest = tmp_path / "valid_tts.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(stage="t2s_full", output_dir=str(tmp_path / "tts"), progress=False,
                      data=DataConfig(train=[str(train_set["tts"])], valid=[str(manifest)],
                                      batch_size=2, num_workers=0),
                      optim=OptimConfig(lr=3e-3, warmup_steps=1, max_steps=1))
    result = train(cfg)
    assert result.valid["valid_examples"] == 4 and result.valid["valid_batches"] == 2
    assert math.isfinite(result.valid["valid_speech_loss"])
    assert result.skipped_rows == 0  # validation rows are not training's bad rows
