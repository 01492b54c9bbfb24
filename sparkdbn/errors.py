"""Error types that map to the jobs' exit codes (2 = bad input or config)."""


class InputError(ValueError):
    """Bad data, configuration or model files: the user must fix the input (exit code 2).

    The message is one line that names the problem and where it is (column, row, key, path).
    """
