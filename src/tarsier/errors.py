"""User-facing errors.

Anything a user can cause (a missing file, a corrupt video, a bad prompt, a broken checkpoint
folder) raises a :class:`TarsierError` whose message is one line naming the thing and the problem.
The CLI prints that line instead of a traceback, and batch jobs record it and carry on.
"""


class TarsierError(Exception):
    """A problem with the user's input, reported as one clear line."""


class MediaError(TarsierError):
    """A video, GIF, image or frame folder that cannot be read or sampled."""


class CheckpointError(TarsierError):
    """A checkpoint folder or hub id that does not hold a usable Tarsier model."""


class PromptError(TarsierError):
    """A prompt that does not fit the media it is paired with."""


def one_line(exc: BaseException) -> str:
    """An exception as a single line for a result record or a reply: a TarsierError's message, else
    the exception's type and message."""
    text = str(exc) if isinstance(exc, TarsierError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
