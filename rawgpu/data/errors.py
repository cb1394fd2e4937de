"""The one error the data layer raises."""

from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be used: a missing, corrupt or unverifiable file, or an unknown dataset.

    The message is one line that names the file (or folder, or dataset), what is wrong with it
    and how to fix it, so the CLI can print it as it is.
    """


# The fix suggested for a local IDX file that cannot be read.
FIX_LOCAL = "re-download it or point --data-dir at a folder with the four standard files"
