"""One settings class, read once from the environment.

Every knob has an environment name and a default that works on a single
machine with the embedded services (see docs/configuration.md).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """imgflow configuration. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # Services
    broker_url: str = Field("kafka://127.0.0.1:9092", validation_alias=_env("BROKER_URL"))
    mongo_url: str = Field("mongodb://127.0.0.1:27017", validation_alias=_env("MONGO_URL"))
    mongo_db: str = Field("imgflow", validation_alias=_env("MONGO_DB"))

    # Application identity and topics
    app_id: str = Field("imgflow", validation_alias=_env("IMGFLOW_APP_ID"))
    topic_prefix: str = Field("imgflow", validation_alias=_env("IMGFLOW_TOPIC_PREFIX"))
    partitions: int = Field(4, ge=1, validation_alias=_env("IMGFLOW_PARTITIONS"))
    replication_factor: int = Field(1, ge=1, validation_alias=_env("IMGFLOW_REPLICATION"))

    # Folders
    home: Path = Field(Path("var"), validation_alias=_env("IMGFLOW_HOME"))
    model: Path | None = Field(None, validation_alias=_env("IMGFLOW_MODEL"))
    upload_dir: Path | None = Field(None, validation_alias=_env("IMGFLOW_UPLOAD_DIR"))
    #: The watcher puts each settled file under this object-store prefix and publishes its URI.
    watch_upload_uri: str | None = Field(
        None, pattern=r"^s3://[^/]+(/.*)?$", validation_alias=_env("IMGFLOW_WATCH_UPLOAD_URI")
    )
    #: Uploads go to this object-store prefix (``s3://bucket/uploads``) instead of the folder,
    #: so every node reads them without a shared volume (imgflow/objects.py).
    upload_uri: str | None = Field(
        None, pattern=r"^s3://[^/]+(/.*)?$", validation_alias=_env("IMGFLOW_UPLOAD_URI")
    )
    dataset_dir: Path | None = Field(None, validation_alias=_env("IMGFLOW_DATASET_DIR"))
    watch_dirs: str = Field("", validation_alias=_env("IMGFLOW_WATCH_DIRS"))
    watch_recursive: bool = Field(True, validation_alias=_env("IMGFLOW_WATCH_RECURSIVE"))
    watch_lifecycle: bool = Field(False, validation_alias=_env("IMGFLOW_WATCH_LIFECYCLE"))
    watch_settle_seconds: float = Field(1.0, ge=0, validation_alias=_env("IMGFLOW_WATCH_SETTLE_SECONDS"))
    image_roots: str = Field("", validation_alias=_env("IMGFLOW_IMAGE_ROOTS"))
    max_upload_bytes: int = Field(20 * 2**20, ge=1, validation_alias=_env("IMGFLOW_MAX_UPLOAD_BYTES"))
    worker_urls: str = Field("http://127.0.0.1:6066", validation_alias=_env("IMGFLOW_WORKER_URLS"))

    # Stage tuning
    batch_size: int = Field(32, ge=1, validation_alias=_env("IMGFLOW_BATCH_SIZE"))
    #: A stage takes what is queued, up to its batch size, waiting at most this long for more.
    batch_wait: float = Field(0.01, gt=0, validation_alias=_env("IMGFLOW_BATCH_WAIT"))
    decode_batch_size: int = Field(16, ge=1, validation_alias=_env("IMGFLOW_DECODE_BATCH_SIZE"))
    decode_timeout: float = Field(10.0, gt=0, validation_alias=_env("IMGFLOW_DECODE_TIMEOUT"))
    #: Decode JPEGs at a reduced scale when the model's input is much smaller (Pillow's draft
    #: mode: DCT scaling, ~2-3x less work on camera-sized images; pixels change slightly).
    decode_draft: bool = Field(True, validation_alias=_env("IMGFLOW_DECODE_DRAFT"))
    #: Threads one model call may use (TFLite); 0 = all the cores.
    model_threads: int = Field(0, ge=0, validation_alias=_env("IMGFLOW_MODEL_THREADS"))
    decode_threads: int = Field(2, ge=1, validation_alias=_env("IMGFLOW_DECODE_THREADS"))
    store_batch_size: int = Field(64, ge=1, validation_alias=_env("IMGFLOW_STORE_BATCH_SIZE"))
    max_file_bytes: int = Field(50 * 2**20, ge=1, validation_alias=_env("IMGFLOW_MAX_FILE_BYTES"))
    max_pixels: int = Field(64_000_000, ge=1, validation_alias=_env("IMGFLOW_MAX_PIXELS"))
    #: Memory the decode threads of one worker may hold at once (imgflow/imaging.py,
    #: ``MemoryBudget``): an image whose decode would need more is refused, and large ones
    #: wait for each other instead of decoding side by side.
    decode_memory_mb: int = Field(768, ge=16, validation_alias=_env("IMGFLOW_DECODE_MEMORY_MB"))
    #: Pillow formats the decode stage opens (names as Pillow spells them); every other is
    #: ``not_an_image``. Each format is decoder code that a hostile file can reach.
    image_formats: str = Field(
        "JPEG,PNG,WEBP,GIF,BMP,TIFF", min_length=1, validation_alias=_env("IMGFLOW_IMAGE_FORMATS")
    )
    #: How far in the future a message's ``submitted_at`` may be (clock skew between hosts):
    #: later ones are malformed. Old values are accepted (backlogs, replays of failures).
    max_clock_skew: float = Field(300.0, ge=0, validation_alias=_env("IMGFLOW_MAX_CLOCK_SKEW"))
    #: Folders of registered models (comma-separated): the only specs a message, a replay or a
    #: promotion may name (by name, name:version, or a spec path inside them). The folder of
    #: ``IMGFLOW_MODEL``, ``IMGFLOW_HOME/models`` and the built-in specs are always included.
    model_dirs: str = Field("", validation_alias=_env("IMGFLOW_MODEL_DIRS"))
    #: Where decoded pixels travel (imgflow/tensors.py): ``kafka`` in the tensor message;
    #: ``mongo`` beside it in MongoDB ``tensors`` (the embedded broker keeps every record in
    #: memory: ``make demo`` uses mongo). ``tensor_ttl``: how long unclaimed pixels are kept.
    tensor_store: Literal["kafka", "mongo"] = Field("kafka", validation_alias=_env("IMGFLOW_TENSOR_STORE"))
    tensor_ttl: float = Field(24 * 3600.0, gt=0, validation_alias=_env("IMGFLOW_TENSOR_TTL"))
    #: Publish every result drawn on its image to ``<prefix>-annotated`` (agents/annotate.py).
    annotate: bool = Field(False, validation_alias=_env("IMGFLOW_ANNOTATE"))
    #: Frames (imgflow/frames.py) kept in MongoDB per source, for previews and replays.
    frames_keep: int = Field(1000, ge=1, validation_alias=_env("IMGFLOW_FRAMES_KEEP"))
    #: ... and at most this many in all, whatever the number of sources (a producer inventing
    #: a new source per frame must not grow MongoDB without bound).
    frames_keep_total: int = Field(20_000, ge=1, validation_alias=_env("IMGFLOW_FRAMES_KEEP_TOTAL"))
    #: ``make demo`` warns (output and dashboard) when the embedded broker's memory passes this
    #: many MB; 0: a quarter of this machine's memory.
    broker_memory_warn_mb: float = Field(0.0, ge=0, validation_alias=_env("IMGFLOW_BROKER_MEMORY_WARN_MB"))
    #: At that limit the launcher rolls the embedded broker over to a fresh one (drained first:
    #: nothing submitted is lost) instead of only warning.
    broker_roll: bool = Field(True, validation_alias=_env("IMGFLOW_BROKER_ROLL"))
    #: The embedded broker lists every record a partition holds on each read of it (docs/design.md
    #: §8: ~0.9 µs of its CPU per record held, per fetch), so its cost per image grows
    #: with what it holds. Past this many records in one partition of the chain, the launcher
    #: rolls it over (or warns) as at the memory limit; 0: never.
    broker_roll_records: int = Field(5000, ge=0, validation_alias=_env("IMGFLOW_BROKER_ROLL_RECORDS"))
    #: WiredTiger cache of the MongoDB-protocol server ``make demo`` starts: most of its memory
    #: (measured: resident ~ 2x the cache + ~150 MB once full). Queries read the rest of the
    #: data through the OS page cache, which is not the process's memory.
    mongo_cache_size: str = Field(
        "128M", pattern=r"^\d+[KMG]$", validation_alias=_env("IMGFLOW_MONGO_CACHE_SIZE")
    )

    # Live counts
    #: Faust table store: ``rocksdb://`` keeps tables on local disk, so a restarted worker reads
    #: only the changelog's tail; ``memory://`` rebuilds them from the whole changelog.
    table_store: str = Field("rocksdb://", validation_alias=_env("IMGFLOW_TABLE_STORE"))
    #: This worker's own state (RocksDB tables). RocksDB locks it per process: one per worker.
    data_dir: Path | None = Field(None, validation_alias=_env("IMGFLOW_DATA_DIR"))
    #: Label-count windows: whole seconds (see ``_whole_seconds``). With a step, hopping windows
    #: of ``window_seconds`` every ``window_step`` (at most the window: no gaps), else tumbling.
    window_seconds: float = Field(60.0, ge=1, validation_alias=_env("IMGFLOW_WINDOW_SECONDS"))
    window_step: float | None = Field(None, ge=1, validation_alias=_env("IMGFLOW_WINDOW_STEP"))
    window_expires: float = Field(3600.0, gt=0, validation_alias=_env("IMGFLOW_WINDOW_EXPIRES"))

    # Web server
    web_host: str = Field("127.0.0.1", validation_alias=_env("IMGFLOW_WEB_HOST"))
    web_bind: str = Field("127.0.0.1", validation_alias=_env("IMGFLOW_WEB_BIND"))
    web_port: int = Field(6066, ge=1, le=65535, validation_alias=_env("IMGFLOW_WEB_PORT"))

    # Access (docs/deployment.md "Security"). Secrets are SecretStr: a printed Settings shows ****.
    api_token: SecretStr | None = Field(None, validation_alias=_env("IMGFLOW_API_TOKEN"))
    api_protect_reads: bool = Field(False, validation_alias=_env("IMGFLOW_API_PROTECT_READS"))
    dashboard_auth_file: Path | None = Field(None, validation_alias=_env("IMGFLOW_DASHBOARD_AUTH_FILE"))
    cookie_secret: SecretStr | None = Field(None, validation_alias=_env("IMGFLOW_COOKIE_SECRET"))
    #: Signs the control topic's records (imgflow/signing.py): with it, a worker takes only a
    #: promotion signed with it; without it, any record (a warning at start says so).
    control_key: SecretStr | None = Field(None, validation_alias=_env("IMGFLOW_CONTROL_KEY"))

    # Broker behaviour (docs/design.md §8: values that work on Tansu and on Apache Kafka)
    session_timeout: float = Field(6.0, gt=0, validation_alias=_env("IMGFLOW_SESSION_TIMEOUT"))
    heartbeat_interval: float = Field(1.0, gt=0, validation_alias=_env("IMGFLOW_HEARTBEAT_INTERVAL"))
    producer_max_batch_size: int = Field(1, ge=1, validation_alias=_env("IMGFLOW_PRODUCER_MAX_BATCH_SIZE"))
    # Minimum 128 KiB: failure records stay far below it (agents/failures.py bounds their text).
    max_message_bytes: int = Field(8 * 2**20, ge=2**17, validation_alias=_env("IMGFLOW_MAX_MESSAGE_BYTES"))
    #: How long the broker may hold a fetch that finds no new records (Faust hard-codes 1500).
    #: The embedded broker holds a fetch over several partitions for all of it, so it is paid
    #: on every hop of the chain (docs/design.md §8); Apache Kafka answers as soon as data arrives.
    #: Lower is faster and costs more idle polling (measured: 10 ms -> p95 53 ms at 30 images/s
    #: and 19% of a core idle for worker + broker; 25 ms -> 78 ms and 11%; 50 ms -> 134 ms, 7%).
    fetch_max_wait_ms: int = Field(25, ge=0, le=30_000, validation_alias=_env("IMGFLOW_FETCH_MAX_WAIT_MS"))
    commit_interval: float = Field(1.0, gt=0, validation_alias=_env("IMGFLOW_COMMIT_INTERVAL"))
    stall_seconds: float = Field(30.0, gt=0, validation_alias=_env("IMGFLOW_STALL_SECONDS"))
    #: ``/health/`` answers 503 "degraded" once a write has been retried this long (MongoDB
    #: down): the worker keeps retrying, nothing is lost, but nothing moves either.
    degraded_after: float = Field(30.0, gt=0, validation_alias=_env("IMGFLOW_DEGRADED_AFTER"))

    @field_validator("image_formats")
    @classmethod
    def _known_formats(cls, value: str) -> str:
        """Names as Pillow's openers know them (JPEG also opens MPO, a phone's multi-picture JPEG)."""
        from PIL import Image

        Image.init()
        names = [f.strip().upper() for f in value.split(",") if f.strip()]
        unknown = [n for n in names if n not in Image.OPEN]
        if unknown or not names:
            raise ValueError(
                f"IMGFLOW_IMAGE_FORMATS: unknown format(s) {', '.join(unknown) or '(none given)'}; "
                f"Pillow here opens {', '.join(sorted(Image.OPEN))}"
            )
        return value

    @field_validator("table_store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        value = value.strip()
        if "://" not in value:
            value += "://"
        if value.split("://", 1)[0] not in {"rocksdb", "memory"}:
            raise ValueError("IMGFLOW_TABLE_STORE must be rocksdb:// or memory://")
        return value

    @field_validator("window_seconds", "window_step")
    @classmethod
    def _whole_seconds(cls, value: float | None) -> float | None:
        """Faust finds a timestamp's windows with ``range(int(start), int(ts) + 1, int(step))``
        (faust/windows.py, ``HoppingWindow.ranges``, behind tumbling windows too): a fraction is
        dropped, so 2.5 s windows would start on whole seconds and overlap, and a 0.5 s step
        would be a step of 0 that fails every count."""
        if value is not None and not float(value).is_integer():
            raise ValueError(f"must be whole seconds (Faust's windows drop fractions), not {value}")
        return value

    @model_validator(mode="after")
    def _step_within_window(self) -> Settings:
        """A step longer than the window leaves gaps: results requested there are counted nowhere."""
        if self.window_step is not None and self.window_step > self.window_seconds:
            raise ValueError(
                f"IMGFLOW_WINDOW_STEP ({self.window_step:g}) must not exceed "
                f"IMGFLOW_WINDOW_SECONDS ({self.window_seconds:g}): results between two windows "
                "would be counted nowhere"
            )
        return self

    @field_validator("broker_url")
    @classmethod
    def _kafka_scheme(cls, value: str) -> str:
        """Accept ``host:port`` lists as well as Faust's ``kafka://`` URLs."""
        value = value.strip()
        if "://" not in value:
            value = "kafka://" + value
        return value

    @field_validator("control_key")
    @classmethod
    def _key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                "IMGFLOW_CONTROL_KEY must be at least 16 characters (make one: openssl rand -hex 32)"
            )
        return value

    @field_validator("api_token", "cookie_secret", "dashboard_auth_file", "control_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``VAR=`` (as Compose writes an unset ``${VAR:-}``) means unset, not an empty secret."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    # Derived values -----------------------------------------------------

    @property
    def model_spec_path(self) -> Path:
        if self.model is not None:
            return self.model
        return self.home / "models" / "efficientnet-lite0" / "model.toml"

    @property
    def faust_datadir(self) -> str:
        """Faust's data directory (tables live in ``<it>/v1/tables``).

        Unset, it is one directory per web port under ``IMGFLOW_HOME/faust``: two workers on one
        machine never share RocksDB files (each must bind its own port), and a worker restarted
        on the same port finds its state again. Faust fills in ``{conf.web_port}`` when it opens
        the tables, after ``faust worker --web-port`` has set it.
        """
        if self.data_dir is not None:
            return str(self.data_dir)
        return str(self.home / "faust" / "worker-{conf.web_port}")

    @property
    def image_format_list(self) -> tuple[str, ...]:
        return tuple(f.strip().upper() for f in self.image_formats.split(",") if f.strip())

    @property
    def model_dir_paths(self) -> list[Path]:
        """Where registered model specs live (see ``model_dirs``): configured folders, the
        default model's folder, the home's ``models`` (one folder per model, as ``train``
        and ``build-model`` write them) and the built-in specs shipped with the package."""
        configured = [Path(p.strip()) for p in self.model_dirs.split(",") if p.strip()]
        builtin = Path(__file__).resolve().parent.parent / "models" / "specs"
        found: list[Path] = []
        for folder in [*configured, self.model_spec_path.parent, self.home / "models", builtin]:
            if folder not in found:
                found.append(folder)
        return found

    @property
    def upload_path(self) -> Path:
        return self.upload_dir or self.home / "uploads"

    @property
    def dataset_path(self) -> Path:
        return self.dataset_dir or self.home / "dataset"

    @property
    def watch_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.watch_dirs.split(",") if p.strip()]

    @property
    def image_root_paths(self) -> list[Path]:
        """The only folders whose files imgflow reads: decode and previews (uploads, dataset,
        watched, ``IMGFLOW_IMAGE_ROOTS``); see imgflow/roots.py."""
        extra = [Path(p.strip()) for p in self.image_roots.split(",") if p.strip() and "://" not in p]
        return [self.dataset_path, self.upload_path, *self.watch_paths, *extra]

    @property
    def object_roots(self) -> list[str]:
        """The only object-store prefixes imgflow reads (``IMGFLOW_IMAGE_ROOTS`` entries that are
        URIs, ``IMGFLOW_UPLOAD_URI``, ``IMGFLOW_WATCH_UPLOAD_URI``); see imgflow/objects.py."""
        uris = [p.strip() for p in self.image_roots.split(",") if "://" in p]
        return uris + [u for u in (self.upload_uri, self.watch_upload_uri) if u]

    @property
    def preview_roots(self) -> list[Path]:
        """Folders the dashboard may preview from: the same as the decode stage may read."""
        return self.image_root_paths

    @property
    def worker_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.worker_urls.split(",") if u.strip()]

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` pairs for plain Kafka clients (aiokafka)."""
        hosts = self.broker_url.split("://", 1)[1]
        return [h.strip().split("://")[-1] for h in hosts.replace(";", ",").split(",") if h]

    def topic(self, stage: str) -> str:
        return f"{self.topic_prefix}-{stage}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
