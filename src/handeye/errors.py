"""The one exception type a user should ever see as a message rather than a traceback."""


class HandEyeError(Exception):
    """Bad input or a missing file: the CLI prints ``handeye: error: <message>`` and exits 2.

    Raise it with a message that names the file or value at fault and, where there is one, the fix.
    """
