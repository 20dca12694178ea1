"""Strict config loading: every error names the file, the key and what was expected."""

import pytest

from minmo.config import (ConfigError, ModelConfig, TrainConfig, apply_overrides, from_dict,
                          load_model_config, load_train_config, save_yaml, to_dict)


def test_presets_load_and_roundtrip(tmp_path):
    for name in ("tiny", "minmo-7b"):
        cfg = load_model_config(name)
        assert isinstance(cfg, ModelConfig) and cfg.name == name
        save_yaml(cfg, tmp_path / f"{name}.yaml")
        assert load_model_config(tmp_path / f"{name}.yaml") == cfg


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nencoder:\n  d_modle: 64\n")
    with pytest.raises(ConfigError) as err:
        load_model_config(path)
    msg = str(err.value)
    assert str(path) in msg and "encoder.d_modle" in msg and "d_model" in msg


def test_wrong_type_names_expected_type(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"optim\.lr' expects float, got str 'fast'"):
        load_train_config(path)
    with pytest.raises(ConfigError, match=r"precision' expects 'auto' \| 'fp32' \| 'bf16'"):
        from_dict(TrainConfig, {"precision": "fp8"}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"num_layers' expects int, got bool"):
        from_dict(ModelConfig, {"llm": {"num_layers": True}})


def test_overrides_parse_yaml_values_and_are_checked(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("stage: s2t_sft\n")
    cfg = load_train_config(path, ["optim.lr=3e-4", "data.train=[a.jsonl, b.jsonl]", "seed=7"])
    assert cfg.optim.lr == 3e-4 and cfg.data.train == ["a.jsonl", "b.jsonl"] and cfg.seed == 7
    with pytest.raises(ConfigError, match="key=value"):
        load_train_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="optim.warmup_steps' expects int"):
        load_train_config(path, ["optim.warmup_steps=ten"])


def test_broken_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("stage: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_train_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown model 'huge'"):
        load_model_config("huge")


def test_overrides_cannot_descend_into_scalars():
    data = to_dict(TrainConfig())
    with pytest.raises(ConfigError, match="non-mapping"):
        apply_overrides(data, ["seed.x=1"])
