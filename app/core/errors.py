"""Errors the numeric core raises for inputs it cannot use; the service layers map them to 4xx."""


class InputError(ValueError):
    """A request's data is unusable: names the field and the fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ProviderUnavailableError(RuntimeError):
    """The configured onnxruntime execution provider is not installed."""
