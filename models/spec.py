"""Model spec files: what a model artefact is and how to feed and read it.

A spec is a small TOML (or YAML) file beside the artefact, so that selecting a model is
configuration, not code. Example::

    name = "efficientnet-lite0"
    version = "1.0.0"
    format = "keras"                 # keras | savedmodel | tflite
    artefact = "efficientnet-lite0.keras"   # relative to this file's folder
    input_size = [224, 224]          # height, width
    resize = "center_crop"           # center_crop | stretch
    preprocessing = "127_128"        # none | unit | symmetric | imagenet | 127_128
    output = "softmax"               # softmax | sigmoid
    labels_file = "labels.txt"       # softmax: one label per line (or inline `labels = [...]`)
    top_k = 5

A binary sigmoid model names its two outcomes instead of a labels file::

    output = "sigmoid"
    negative_label = "no tumour"
    positive_label = "tumour"
    threshold = 0.5

A face model (``output = "faces"``) is the built-in detector + embedder (models/faces.py,
weights inside their wheels: no artefact, no labels); its answer per image is a list of
faces, each named after the nearest enrolled person (imgflow/people.py)::

    format = "faces"
    output = "faces"
    input_size = [360, 480]          # the detector sees the image scaled to fit, not cropped
    resize = "letterbox"
    preprocessing = "none"
    threshold = 0.9                  # lowest detection score kept
    match_threshold = 0.9            # largest embedding distance that is still a known person
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ModelError", "ModelSpec", "ModelSpecError", "load_spec"]


class ModelError(Exception):
    """Base class for everything that goes wrong describing or loading a model."""


class ModelLoadError(ModelError, RuntimeError):
    """The artefact named by a spec is missing or cannot be loaded."""


class ModelSpecError(ModelError, ValueError):
    """A spec file is missing, malformed, or disagrees with its artefact."""


Format = Literal["keras", "savedmodel", "tflite", "faces"]
Resize = Literal["center_crop", "stretch", "letterbox"]
Preprocessing = Literal["none", "unit", "symmetric", "imagenet", "127_128"]
Output = Literal["softmax", "sigmoid", "faces"]


class ModelSpec(BaseModel):
    """Everything the pipeline needs to feed a model and name its answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    format: Format
    artefact: Path
    input_size: tuple[int, int]
    resize: Resize = "center_crop"
    preprocessing: Preprocessing
    output: Output
    logits: bool = False
    labels: list[str] = Field(repr=False)  # 1000 names would drown every log line
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    #: Faces: the largest embedding distance to an enrolled person that still names them
    #: (None: the engine's own, ``models.faces.MATCH_THRESHOLD``).
    match_threshold: float | None = Field(default=None, gt=0.0)
    #: Faces: the smallest face the detector looks for, in input pixels.
    min_face: int = Field(default=20, ge=8)
    top_k: int = Field(default=5, ge=1)
    task: Literal["classifier"] = "classifier"
    spec_path: Path

    @property
    def key(self) -> str:
        """Identity of the model in predictions and storage: ``name:version``."""
        return f"{self.name}:{self.version}"

    @property
    def positive_label(self) -> str:
        """Sigmoid models only: the label chosen when the score reaches the threshold."""
        self._require_sigmoid()
        return self.labels[1]

    @property
    def negative_label(self) -> str:
        """Sigmoid models only: the label chosen below the threshold."""
        self._require_sigmoid()
        return self.labels[0]

    def _require_sigmoid(self) -> None:
        if self.output != "sigmoid":
            raise AttributeError(f"{self.key} is a {self.output} model, it has no binary labels")

    @field_validator("input_size", mode="before")
    @classmethod
    def _two_dims(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"input_size must be [height, width], got {value!r}")
        return value

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"input_size must be two positive ints (height, width), got {value}")
        return value

    @field_validator("labels")
    @classmethod
    def _clean_labels(cls, value: list[str]) -> list[str]:
        stripped = [label.strip() for label in value]
        empty = [i for i, label in enumerate(stripped) if not label]
        if empty:
            raise ValueError(f"labels must not be empty (label index {empty[0]})")
        seen: dict[str, int] = {}
        for i, label in enumerate(stripped):
            if label in seen:
                raise ValueError(
                    f"label {label!r} appears twice (indices {seen[label]} and {i}); "
                    "labels key counts and queries, so they must be unique"
                )
            seen[label] = i
        return stripped

    @model_validator(mode="after")
    def _labels_fit_output(self) -> ModelSpec:
        if (self.output == "faces") != (self.format == "faces"):
            raise ValueError('output = "faces" goes with format = "faces" (the built-in face engine), only')
        if self.output == "faces":
            if self.labels:
                raise ValueError("a face model names people from the enrolled ones, not from labels")
            return self
        if self.output == "sigmoid" and len(self.labels) != 2:
            raise ValueError(
                f"a sigmoid model needs exactly 2 labels [negative, positive], got {len(self.labels)}"
            )
        if self.output == "softmax" and len(self.labels) < 2:
            raise ValueError(f"a softmax model needs at least 2 labels, got {len(self.labels)}")
        return self


# Keys a spec file may hold. `labels`, `labels_file`, `negative_label` and `positive_label`
# become the single `labels` field; `spec_path` is filled in from where the file was found.
_FILE_KEYS = (set(ModelSpec.model_fields) - {"spec_path"}) | {
    "labels_file",
    "negative_label",
    "positive_label",
}
_REQUIRED_KEYS = ("name", "version", "format", "artefact", "input_size", "preprocessing", "output")


#: A spec is a few hundred bytes; a labels file, one name per class.
MAX_SPEC_BYTES = 64 * 1024
MAX_LABELS_BYTES = 4 * 2**20
SPEC_SUFFIXES = (".toml", ".yaml", ".yml")


def _read_text(path: Path, limit: int, what: str) -> str:
    """A spec's file as text: a regular file, not a link, at most ``limit`` bytes (a path
    such as ``/dev/zero`` or a FIFO is refused before anything is read)."""
    from models.safeio import ReadRefused, read_regular

    try:
        return read_regular(path, limit, allow_empty=True).decode("utf-8")
    except ReadRefused as exc:
        if exc.kind == "missing_file":
            raise ModelSpecError(f"{what} {path} does not exist") from None
        raise ModelSpecError(f"{what} {path} cannot be read: {exc.message}") from None
    except UnicodeDecodeError as exc:
        raise ModelSpecError(f"{what} {path} is not UTF-8 text: {exc}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in SPEC_SUFFIXES:  # before the file is touched
        raise ModelSpecError(
            f"model spec {path} must end in .toml, .yaml or .yml, not {suffix or '(none)'!r}"
        )
    text = _read_text(path, MAX_SPEC_BYTES, "model spec")
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml  # only YAML specs need it

            data = yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelSpecError(f"model spec {path} is not valid TOML: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError, imported lazily
        raise ModelSpecError(f"model spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelSpecError(f"model spec {path} must be a table of keys, got {type(data).__name__}")
    return data


def _inside(folder: Path, name: str, what: str, spec: Path) -> Path:
    """``folder / name``, refused unless it really lies inside ``folder`` (links followed):
    a spec names files beside it, never ``/etc`` or another user's model."""
    target = (folder / Path(name)).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ModelSpecError(f"model spec {spec}: {what} {name!r} is outside the spec's folder {folder}")
    return target


def _read_labels_file(path: Path, spec: Path) -> list[str]:
    lines = _read_text(path, MAX_LABELS_BYTES, f"labels file (named in {spec})").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ModelSpecError(
                f"labels file {path} has an empty line {number}; one label per line, line N is class N-1"
            )
    return [line.strip() for line in lines]


def _resolve_labels(raw: dict[str, Any], folder: Path, spec: Path) -> list[str]:
    output = raw.get("output")
    has_file, has_inline = "labels_file" in raw, "labels" in raw
    if output == "faces":
        if has_file or has_inline or "negative_label" in raw or "positive_label" in raw:
            raise ModelSpecError(f"model spec {spec}: a face model has no labels (people are enrolled)")
        return []
    has_binary = "negative_label" in raw or "positive_label" in raw
    if output == "sigmoid":
        if has_file or has_inline:
            raise ModelSpecError(
                f"model spec {spec}: a sigmoid model names its outcomes with negative_label "
                "and positive_label, not labels/labels_file"
            )
        missing = [k for k in ("negative_label", "positive_label") if k not in raw]
        if missing:
            raise ModelSpecError(f"model spec {spec}: sigmoid output needs {', '.join(missing)}")
        negative, positive = raw.pop("negative_label"), raw.pop("positive_label")
        if not isinstance(negative, str) or not isinstance(positive, str):
            raise ModelSpecError(f"model spec {spec}: negative_label/positive_label must be text")
        return [negative, positive]
    if has_binary:
        raise ModelSpecError(f"model spec {spec}: negative_label/positive_label are for sigmoid models only")
    if has_file and has_inline:
        raise ModelSpecError(f"model spec {spec}: give labels_file or labels, not both")
    if has_file:
        labels_file = raw.pop("labels_file")
        if not isinstance(labels_file, str) or not labels_file:
            raise ModelSpecError(f"model spec {spec}: labels_file must be a path")
        return _read_labels_file(_inside(folder, labels_file, "labels_file", spec), spec)
    if has_inline:
        labels = raw.pop("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ModelSpecError(f"model spec {spec}: labels must be a list of strings")
        return labels
    raise ModelSpecError(f"model spec {spec}: a softmax model needs labels_file or labels")


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a model spec; paths inside it are relative to its folder."""
    spec_path = Path(path).expanduser()
    if spec_path.suffix.lower() not in SPEC_SUFFIXES:  # before anything touches the file system
        raise ModelSpecError(
            f"model spec {spec_path} must end in .toml, .yaml or .yml, not {spec_path.suffix or '(none)'!r}"
        )
    spec_path = spec_path.resolve()
    raw = _read_mapping(spec_path)
    unknown = sorted(set(raw) - _FILE_KEYS)
    if unknown:
        raise ModelSpecError(
            f"model spec {spec_path}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_FILE_KEYS))}"
        )
    if raw.get("format") == "faces":
        raw.setdefault("artefact", ".")  # the engine's weights are in its packages
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise ModelSpecError(f"model spec {spec_path}: missing key(s) {', '.join(missing)}")
    folder = spec_path.parent
    raw["labels"] = _resolve_labels(raw, folder, spec_path)
    artefact = raw["artefact"]
    if not isinstance(artefact, str) or not artefact:
        raise ModelSpecError(f"model spec {spec_path}: artefact must be a path")
    raw["artefact"] = _inside(folder, artefact, "artefact", spec_path)
    raw["spec_path"] = spec_path
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ModelSpecError(f"model spec {spec_path}: {_describe(exc)}") from exc
