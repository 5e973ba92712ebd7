"""What decoding produces (:class:`Decoded`: pixels + :class:`SourceInfo`) and what it may do
(:class:`DecodeOptions`); shared by :mod:`edgedx.decode` and :mod:`edgedx.dicom`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from edgedx.errors import UsageError
from edgedx.limits import DEFAULT_MAX_FILE_SIZE

DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class SourceInfo:
    """What the file was; never patient data."""

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    frame: int | None = None
    frames: int = 1
    photometric: str | None = None
    modality: str | None = None
    transfer_syntax: str | None = None
    #: DICOM BodyPartExamined and ViewPosition (code strings, not patient data), for the gate's rules.
    body_part: str | None = None
    view_position: str | None = None
    #: DCT scaling denominator of a reduced JPEG decode (``DecodeOptions.target_size``): the image is
    #: about ``width / reduced`` x ``height / reduced``; 1 for a full decode.
    reduced: int = 1


@dataclass(frozen=True)
class DecodeOptions:
    """Args:
    window: DICOM window (center, width) overriding the file's VOI; width must be > 0.
    all_frames: decode every frame of a multi-frame DICOM, not only the first.
    max_pixels: refuse images with more pixels than this (decompression bombs); for DICOM, the
        pixels of every frame that would be decoded.
    max_file_size: refuse files larger than this many bytes, before reading them.
    target_size: (width, height) of the model input the image will be resized to. A JPEG at least
        6x larger on both sides is then decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling,
        never below :data:`REDUCED_MARGIN` times the target (see :func:`reduction`); other
        formats are unaffected. ``SourceInfo.reduced`` says which scale was used.
    target_channels: channels of the model input. 1 decodes 8-bit JPEGs straight to gray (the
        luma plane, no RGB round trip); the decoded image is then 2-D while ``SourceInfo.channels``
        still says what the file holds.

    Raises:
        UsageError: a window that is not two finite numbers with width > 0, max_pixels < 1, a
            target_size that is not two positive integers, or target_channels not 1 or 3.
    """

    window: tuple[float, float] | None = None
    all_frames: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    target_size: tuple[int, int] | None = None
    target_channels: int | None = None
    max_file_size: int = DEFAULT_MAX_FILE_SIZE

    def __post_init__(self) -> None:
        if self.window is not None:
            if len(self.window) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.window):
                raise UsageError(f"window must be two finite numbers (center, width), got {self.window!r}")
            if self.window[1] <= 0:
                raise UsageError(f"window width must be > 0, got {self.window[1]}")
        if not _positive_int(self.max_pixels):
            raise UsageError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        if not _positive_int(self.max_file_size):
            raise UsageError(f"max_file_size must be a positive integer, got {self.max_file_size!r}")
        if self.target_size is not None and not (
            isinstance(self.target_size, tuple)
            and len(self.target_size) == 2
            and all(map(_positive_int, self.target_size))
        ):
            raise UsageError(f"target_size must be (width, height), two positive integers, got {self.target_size!r}")
        if self.target_channels not in (None, 1, 3) or isinstance(self.target_channels, bool):
            raise UsageError(f"target_channels must be 1, 3 or None, got {self.target_channels!r}")

    def for_model(self, width: int, height: int, channels: int, judges_color: bool) -> DecodeOptions:
        """These options with the model's input size and channels, so the decoder skips work the
        model cannot see (JPEG DCT scaling, gray decode); left as they are when a target size is set.
        Not gray when the input gate judges colour from the pixels (``judges_color``)."""
        if self.target_size is not None:
            return self
        return dataclasses.replace(self, target_size=(width, height), target_channels=None if judges_color else channels)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray
    info: SourceInfo
