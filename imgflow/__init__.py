"""imgflow: real-time image classification on Kafka with Faust.

``faust -A imgflow worker`` imports this package and uses :data:`app`.
Importing builds the app object only: no connection, no thread, no change to
Faust (the worker installs its fixes and opens its resources when it starts).
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    #: The installed distribution's version (pyproject.toml): in ``/health/``, ``/metrics``
    #: (``imgflow_build_info``) and ``faust -A imgflow --version`` is Faust's, not this.
    __version__ = _version("imgflow")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

from imgflow.app import app  # after the version: the app's modules read it

__all__ = ["__version__", "app"]
