"""Errors a user can fix: reported as one line naming the bad value, never as a traceback."""


class HarnessError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(HarnessError):
    """A config value outside what is allowed."""


class DataError(HarnessError):
    """A dataset that is missing, corrupt or unreadable."""
