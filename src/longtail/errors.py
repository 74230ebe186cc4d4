"""The one exception type for user mistakes: the CLI prints its message as a single line."""


class LongtailError(Exception):
    """A problem the user can fix (bad config, missing data, corrupt checkpoint).

    The message must say what was wrong and how to fix it, on one line.
    """
