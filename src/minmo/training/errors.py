"""Errors the training loop reports as one line (no traceback) in the CLI."""


class TrainingError(RuntimeError):
    """Training cannot start or go on: the message names the file/row and the fix."""
