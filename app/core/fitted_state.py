"""One serialiser for fitted state, scikit-learn's convention made storable: the state is the attributes
named by `state_keys()` with a trailing underscore (set by `fit`), stored under the names without it
(api.md's names) beside a `state_version`, as JSON (`fitted`: small states, shown in answers) or as
named arrays (`fitted_arrays`: detectors' and SDM's large ones, stored as an .npz blob).
Hyper-parameters are constructor arguments and never part of the state (a record keeps them as its
`params`)."""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

STATE_VERSION = "state_version"


class IncompatibleFittedStateError(ValueError):
    """A stored state written by another state version of its estimator."""


class HyperParameters:
    """scikit-learn's `get_params`: the constructor's arguments, read back from the attributes of the same
    names (a constructor keeps each argument as is, and takes no runtime object)."""

    def get_params(self) -> dict[str, Any]:
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: getattr(self, name) for name in names}


class FittedState:
    state_version: ClassVar[int] = 1

    @abstractmethod
    def state_keys(self) -> tuple[str, ...]:
        """The names of the fitted attributes (without their trailing underscore)."""

    def fitted(self) -> dict[str, Any]:
        """The state, JSON-ready (arrays as nested lists); an unset optional attribute (None) is left out."""
        state: dict[str, Any] = {STATE_VERSION: self.state_version}
        for key in self.state_keys():
            value = getattr(self, key + "_")
            if value is not None:
                state[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return state

    def load(self, state: dict[str, Any]) -> Self:
        """Restore what `fitted` wrote (lists become float64 arrays, numbers floats); states stored before
        versions existed are version 1."""
        self._check_version(state.get(STATE_VERSION, 1))
        for key in self.state_keys():
            if key in state:
                setattr(self, key + "_", _restored(state[key]))
        return self

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        """The state as named arrays in their own dtypes (for an .npz blob: supports and whitening
        matrices are too large for JSON), a 0-d `state_version` beside them; an unset optional attribute
        (None) is left out."""
        arrays = {STATE_VERSION: np.asarray(self.state_version, np.int64)}
        for key in self.state_keys():
            value = getattr(self, key + "_")
            if value is not None:
                arrays[key] = np.asarray(value)
        return arrays

    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> Self:
        """Restore what `fitted_arrays` wrote: arrays as stored, 0-d ones as Python numbers, absent ones
        None; blobs stored before versions existed are version 1."""
        self._check_version(int(arrays[STATE_VERSION]) if STATE_VERSION in arrays else 1)
        for key in self.state_keys():
            value = arrays.get(key)
            setattr(self, key + "_", value.item() if value is not None and value.ndim == 0 else value)
        return self

    def _check_version(self, version: object) -> None:
        if version != self.state_version:
            raise IncompatibleFittedStateError(
                f"{type(self).__name__} state version {version} cannot be read (this build reads {self.state_version})"
            )


def _restored(value: Any) -> Any:
    if isinstance(value, list):
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value
