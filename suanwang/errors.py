"""The one error type the CLI turns into a single line and a non-zero exit."""


class SuanwangError(Exception):
    """A failure the user can act on; the message names the cause and what to do."""


def need_extra(module: str, extra: str, what: str, instead: str) -> None:
    """Imports `module`, or says which optional part of suanwang (`pip install 'suanwang[extra]'`) brings it."""
    try:
        __import__(module)
    except ImportError:
        raise SuanwangError(
            f"{what} needs the {module} package, which is not installed: pip install 'suanwang[{extra}]'"
            + (f", or {instead}" if instead else "")
        ) from None
