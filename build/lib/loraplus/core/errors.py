"""The one exception type for mistakes a user can fix."""


class LoraPlusError(ValueError):
    """A problem the user caused and can fix (bad config, missing file, wrong column, ...).

    The message is one line naming the problem and what to do; the CLI prints it and exits 2.
    """
