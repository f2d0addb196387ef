"""A model file for tests/broken_sweeps: it fails to import, as when a dependency is missing."""

import no_such_dependency  # noqa: F401


def build(x_train, y_train, x_val, y_val, params):
    return None, None
