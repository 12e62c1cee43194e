"""User-facing errors: raised for bad input and impossible configs, shown without a traceback."""


class UserError(ValueError):
    """A mistake the user can fix (bad file, record, flag or config): the message names the file,
    line or record, and the field; `launch.py` and `distillm` print it and exit with status 1."""
