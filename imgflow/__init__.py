"""imgflow: real-time image classification on Kafka with Faust.

``faust -A imgflow worker`` imports this package and uses :data:`app`.
"""

from imgflow.app import app

__all__ = ["app"]
