"""Errors the numeric core raises for inputs it cannot use; the service layers map them to 4xx."""

from __future__ import annotations


class InputError(ValueError):
    """A request's data is unusable: names the field and the fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        """Pickled with both arguments (a Dask worker's error reaches the server as itself)."""
        return type(self), (self.field, self.message)


class ProviderUnavailableError(RuntimeError):
    """The configured onnxruntime execution provider is not installed."""
