"""Engine directories: options for the target runtime, manifest, build cache, the build itself, validation."""

# build-engine's exit status when the target's engine is a TensorRT plan and it could not be built.
EXIT_NO_PLAN = 4


class BuildError(RuntimeError):
    """A build that cannot proceed; the message names the flag or file and the fix."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
