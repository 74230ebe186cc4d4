"""The one exception type for user mistakes: the CLI prints its message as a single line."""


def one_line(text: object, limit: int = 200) -> str:
    """`text` with its whitespace (newlines included) collapsed, cut to `limit` characters: for quoting
    messages of other libraries inside ours."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class LongtailError(Exception):
    """A problem the user can fix (bad config, missing data, corrupt checkpoint).

    The message must say what was wrong and how to fix it, on one line (whitespace, newlines
    included, is collapsed here, so text quoted from elsewhere cannot break that). The command line
    prints it as `longtail: error: MESSAGE` and exits with 2; the Python API raises it.

    Examples:
        >>> import longtail
        >>> try:
        ...     longtail.train("configs/fmnist_lt/ce_imba100.yaml", "train.lr=fast")
        ... except longtail.LongtailError as error:
        ...     print(error)
        config key 'train.lr' expects float, got str 'fast'
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))
