"""User-facing errors shared by every package."""


class OdysseyError(Exception):
    """An error the user caused or can fix; its message is one line and holds no secret."""
