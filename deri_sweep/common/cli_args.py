"""Command-line values shared by the entry points (``ablate``, ``probe``)."""

from __future__ import annotations

from pathlib import Path


def name_dirs(values: list[str], flag: str = "--caches") -> dict[str, Path]:
    """Parse ``NAME=DIR`` arguments (``mimic=/data/caches/mimic``) into name -> resolved folder.

    Args:
        values: the flag's values, as given.
        flag: the flag's name, for the error message.

    Raises:
        ValueError: a value without ``=``, with an empty name or folder, or a name given twice.
    """
    parsed: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"{flag} {value!r}: expected NAME=DIR, e.g. mimic=/data/caches/mimic")
        if name in parsed:
            raise ValueError(f"{flag}: {name!r} is given twice ({parsed[name]} and {folder})")
        parsed[name] = Path(folder).resolve()
    return parsed
