"""minmo: an open implementation of MinMo, a full-duplex voice LLM (arXiv 2501.06282)."""

__version__ = "0.1.0"

# the libraries whose versions decide results: a figure, a checkpoint or a bug report names them
_RESULT_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers",
                     "numpy", "faster-whisper", "ctranslate2", "onnxruntime")


def library_versions() -> dict[str, str]:
    """Python's and the installed versions of the libraries that decide minmo's results (those
    not installed are left out). Reads package metadata only: imports nothing."""
    import platform
    from importlib import metadata

    versions = {"minmo": __version__, "python": platform.python_version()}
    for name in _RESULT_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
