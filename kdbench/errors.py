"""User-facing errors: every one becomes a one-line message and exit code 2 in the CLI."""


class KdbenchError(Exception):
    """A problem with the user's input (unknown name, missing file, bad value).

    The CLI prints ``kdbench: error: <message>`` and exits with status 2, without a
    traceback; the message must name the problem and, where possible, the fix.
    """


def missing(path, what: str = "") -> KdbenchError:
    """The one message for a path that is not there: ``[what: ]no such file or directory: PATH``."""
    return KdbenchError(f"{what + ': ' if what else ''}no such file or directory: {path}")
