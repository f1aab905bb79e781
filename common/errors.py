"""The one exception a stage raises for bad input: the CLI turns it into exit 2."""


class InputError(Exception):
    """Bad input or usage. The message is one line that names the file and the problem."""
