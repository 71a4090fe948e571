"""Prometheus metrics for one worker process, served at ``GET /metrics``.

A private registry (not the global one) keeps the output to imgflow's own
series and lets tests create apps side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        from imgflow import __version__

        # imgflow_build_info{version="..."} 1: which release a worker runs, for dashboards and alerts.
        build = Info("imgflow_build", "The imgflow release this worker runs.", registry=r)
        build.info({"version": __version__})
        self.decoded = Counter("imgflow_images_decoded", "Images decoded into tensors.", registry=r)
        self.classified = Counter("imgflow_images_classified", "Images classified.", ["model"], registry=r)
        self.stored = Counter("imgflow_images_stored", "Predictions written to MongoDB.", registry=r)
        self.failed = Counter(
            "imgflow_images_failed", "Images that could not go on.", ["stage", "kind"], registry=r
        )
        self.dropped = Counter(
            "imgflow_dead_letters_dropped",
            "Dead letters the failures stage could not store (logged with their image id).",
            ["stage"],
            registry=r,
        )
        self.promotions = Counter(
            "imgflow_promotions",
            "Model promotions received, by outcome (applied, refused).",
            ["outcome"],
            registry=r,
        )
        self.active_model = Gauge(
            "imgflow_active_model",
            "The default model for new images (1 for the active name:version).",
            ["model"],
            registry=r,
        )
        self.annotated = Counter(
            "imgflow_images_annotated",
            "Results drawn on their image for imgflow-annotated, by outcome (sent, no_original).",
            ["outcome"],
            registry=r,
        )
        self.counted = Counter("imgflow_labels_counted", "Stored results counted in tables.", registry=r)
        self.redelivered = Counter(
            "imgflow_redelivered_skipped",
            "Redelivered messages whose work was done already.",
            ["stage"],
            registry=r,
        )
        self.recounted = Counter(
            "imgflow_labels_recounted", "Redelivered stored results not counted again.", registry=r
        )
        self.changelog_recovered = Counter(
            "imgflow_table_changelog_recovered",
            "Changelog records read to rebuild tables (all of them with memory://, the tail with rocksdb://).",
            ["table"],
            registry=r,
        )
        self.batch_size = Histogram(
            "imgflow_batch_size",
            "Messages per processed batch.",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "imgflow_inference_seconds",
            "Model call time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "imgflow_end_to_end_seconds",
            "From submission to stored in MongoDB.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # The consumer group's lag on the partitions this worker owns (imgflow/lag.py), set at
        # each scrape: what an autoscaler (KEDA's Prometheus scaler) sums over the workers.
        self.consumer_lag = Gauge(
            "imgflow_consumer_lag",
            "Messages behind the group's committed offset, per owned topic partition of the chain.",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_lag_total = Gauge(
            "imgflow_consumer_lag_total",
            "Sum of imgflow_consumer_lag over this worker's partitions.",
            registry=r,
        )
        self.oldest_unprocessed = Gauge(
            "imgflow_consumer_oldest_unprocessed_seconds",
            "Age of the oldest message not yet committed past, per owned topic partition (0: none).",
            ["topic", "partition"],
            registry=r,
        )
        self.stalled_partitions = Gauge(
            "imgflow_stalled_partitions",
            "Partitions behind the broker with nothing in flight and no progress (liveness check).",
            registry=r,
        )
        self.reseeks = Counter(
            "imgflow_partition_reseeks", "Stalled partitions re-sought to their committed offset.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()
