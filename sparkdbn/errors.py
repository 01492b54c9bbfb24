"""Error types that map to the jobs' exit codes (2 = bad input or config)."""


class InputError(ValueError):
    """Bad data, configuration or model files: the user must fix the input (exit code 2).

    The message is one line that names the problem and where it is (column, row, key, path).
    """


class DivergenceError(InputError):
    """Training blew up (non-finite state, or an error far above the first epoch's).

    Training is deterministic, so a rerun diverges the same way: the fix is in the config (a
    lower learning rate, standardized data for Gaussian units), hence exit code 2 like any
    bad setting. The checkpoint of the last good epoch is kept on disk.
    """
