"""Engine directories: options for the target runtime, manifest, build cache, the build itself, validation."""


class BuildError(RuntimeError):
    """A build that cannot proceed; the message names the flag or file and the fix."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
