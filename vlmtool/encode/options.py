"""`vlmtool encode`'s options: one frozen dataclass, each field with its default and its
command-line form (core/options.py), light to import (the CLI builds its parameters from it)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from vlmtool.core.executors import ExecutorOptions
from vlmtool.core.options import (
    DECODE,
    DEVICE,
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    MAX_TEXT_BYTES,
    PRECISION,
    PROGRESS,
    STRICT,
    WORKERS,
    option,
)
from vlmtool.core.records import ReadOptions
from vlmtool.errors import UsageError


@dataclass(frozen=True)
class EncodeOptions(ExecutorOptions):
    """`vlmtool encode`'s options (see its --help). Every field but the free ones must match on resume."""

    pretrained: str = option(MISSING, "A clip-train folder, a checkpoint file, or an open_clip pretrained tag (with --model); "
                             "'random' for random weights (tests only).")
    model: str | None = option(None, "open_clip architecture, e.g. ViT-L-14-336 (not needed with a clip-train folder).")
    layer: int = option(-2, "Block whose output is written: -2 the penultimate (LLaVA's), -1 the last (a ResNet tower: its "
                        "stages, -2 is layer3).")
    cls: bool = option(False, "Keep the class token as the first row of each view.")
    anyres: str | None = option(None, "Tile images by a budget preset's plan at the tower's size: llava-next (base + tiles, row "
                                "newlines) or internvl2.5 (tiles + thumbnail).")
    frame_budget: int | None = option(None, "Videos: token rows per video; frames = floor(B / rows per frame) (default: 8 frames).")
    select: str = option("uniform", "Videos: which frames, uniform, fps (at most --sample-fps a second) or content (where the "
                         "picture changes).")
    sample_fps: float = option(1.0, "Videos with --select fps: frames a second at most.")
    pooled: bool = option(False, "Also write KEY.pooled.npy, the normalized image embedding.")
    precision: str = PRECISION()
    decode: str = DECODE()
    max_pixels: int = MAX_PIXELS()
    max_image_bytes: int = MAX_IMAGE_BYTES()
    max_text_bytes: int = MAX_TEXT_BYTES()
    max_member_bytes: int = ReadOptions.max_member_bytes
    batch_size: int = option(64, "Views per forward of the tower.", flags=("--batch-size", "-b"), min=1, free=True)
    workers: int = WORKERS(2)
    device: str = DEVICE()
    strict: bool = STRICT()
    progress: bool = PROGRESS()

    def __post_init__(self):
        from vlmtool.budget.video import STRATEGIES

        if self.select not in STRATEGIES:
            raise UsageError(f"--select {self.select}: use one of {', '.join(STRATEGIES)}")
        if self.frame_budget is not None and self.frame_budget < 1:
            raise UsageError("--frame-budget must be a positive number of tokens")
        if not self.sample_fps > 0:
            raise UsageError("--sample-fps must be > 0")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        from vlmtool.core.device_decode import check_decode

        check_decode(self.decode)

    def read(self) -> ReadOptions:
        return ReadOptions.of(self)


