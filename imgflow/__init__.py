"""imgflow: real-time image classification on Kafka with Faust.

``faust -A imgflow worker`` imports this package and uses :data:`app`.
Importing builds the app object only: no connection, no thread, no change to
Faust (the worker installs its fixes and opens its resources when it starts).
"""

from imgflow.app import app

__all__ = ["app"]
