"""Reading and writing audio files as float32 mono waveforms.

Decoding uses ``soundfile`` (WAV, FLAC, OGG); resampling uses ``soxr`` at its "HQ" quality. Every failure to read a
file raises :class:`AudioReadError`, which names the file and the problem.
"""

from __future__ import annotations

import errno
import io
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

#: File extensions (lower case) treated as audio by the dataset readers.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")

#: Scale between float samples in [-1, 1] and int16 samples.
INT16_SCALE = 32767.0

#: A clip with more than this fraction of its samples at full scale is reported as clipped.
CLIPPED_FRACTION = 0.1


class AudioReadError(ValueError):
    """An audio file could not be turned into a waveform.

    Attributes:
        path: The file.
        reason: What went wrong, in a few words.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read audio file {self.path}: {reason}")


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode an audio file to a float32 mono waveform at ``sample_rate``.

    Channels are mixed down by their mean; the waveform is resampled with soxr ("HQ") when the file's rate differs.

    Args:
        path: A WAV, FLAC or OGG file.
        sample_rate: The rate of the returned waveform, in Hz.

    Returns:
        A 1-D float32 array (samples in [-1, 1] for integer-PCM files).

    Raises:
        AudioReadError: The file is missing, not decodable, empty, or holds non-finite samples.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = Path(path)
    if not path.exists():
        raise AudioReadError(path, _missing_reason(path))
    if path.is_dir():
        raise AudioReadError(path, "is a directory, not an audio file")
    if path.is_file() and path.stat().st_size == 0:
        raise AudioReadError(path, "empty file (0 bytes)")
    return _decode(path, path, sample_rate)


def _missing_reason(path: Path) -> str:
    """Why ``path`` (for which ``exists()`` is false) cannot be opened: a dangling symbolic link, a symbolic link
    loop, or no file at all."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself through other links); not opened"
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symbolic link (its target {target} does not exist)"
        return "file not found"
    return "file not found"


def read_audio_bytes(data: bytes, name: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode an audio file held in memory (e.g. a member of a zip archive), as :func:`read_audio` does a path.

    Args:
        data: The file's bytes.
        name: Where the bytes come from (``archive.pk3:sound/a.ogg``), used in error messages.
        sample_rate: The rate of the returned waveform, in Hz.

    Raises:
        AudioReadError: The bytes are empty or not decodable, or hold no or non-finite samples.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not data:
        raise AudioReadError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, sample_rate)


def _decode(source: str | os.PathLike | BinaryIO, name: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode ``source`` to float32 mono at ``sample_rate``; errors name ``name``."""
    try:
        data, file_rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, TypeError, ValueError) as error:
        raise AudioReadError(name, f"not a decodable audio file ({error})") from error
    if data.shape[0] == 0:
        raise AudioReadError(name, "holds no samples")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise AudioReadError(name, "holds non-finite samples (NaN or infinity)")
    if file_rate != sample_rate:
        wave = soxr.resample(wave, file_rate, sample_rate, quality="HQ")
        if wave.shape[0] == 0:
            raise AudioReadError(name, f"too short to resample from {file_rate} Hz to {sample_rate} Hz")
    return np.ascontiguousarray(wave, dtype=np.float32)


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Convert a float waveform to int16: clip to [-1, 1], scale by 32767 and round to nearest."""
    return np.rint(np.clip(np.asarray(wave, dtype=np.float64), -1.0, 1.0) * INT16_SCALE).astype(np.int16)


def try_read_int16(path: str | os.PathLike, sample_rate: int = 16000) -> tuple[np.ndarray | None, str]:
    """Read a file as an int16 waveform, returning the failure reason instead of raising.

    Args:
        path: The audio file.
        sample_rate: The rate of the returned waveform, in Hz.

    Returns:
        ``(wave, note)`` on success, ``(None, reason)`` when the file could not be read. ``note`` is empty for an
        ordinary clip; for a suspicious one that is still usable it says what is odd (see :func:`clip_warnings`).
    """
    try:
        wave = to_int16(read_audio(path, sample_rate))
    except AudioReadError as error:
        return None, error.reason
    return wave, "; ".join(clip_warnings(path, wave))


def clip_warnings(path: str | os.PathLike, wave: np.ndarray) -> list[str]:
    """What is suspicious about a decoded clip (kept, but worth a look), in words; empty for an ordinary clip.

    Checks: a WAV file whose header announces more samples than the file holds (truncated, e.g. an interrupted
    copy), every sample zero, a single sample, and more than :data:`CLIPPED_FRACTION` of samples at full scale.

    Args:
        path: The file ``wave`` was decoded from.
        wave: Its int16 samples (as :func:`try_read_int16` makes them).
    """
    notes = []
    announced = wav_header_frames(path)
    if announced is not None:
        try:
            held = soundfile.info(str(path)).frames
        except (RuntimeError, OSError, TypeError, ValueError):
            held = None
        if held is not None and held < announced:
            notes.append(f"truncated: header says {announced} samples, file holds {held}")
    if wave.shape[0] == 1:
        notes.append("holds only 1 sample")
    if not wave.any():
        notes.append(f"silent: all {wave.shape[0]} samples are zero")
    elif wave.shape[0]:
        fraction = float(np.mean(np.abs(wave.astype(np.int32)) >= int(INT16_SCALE)))
        if fraction > CLIPPED_FRACTION:
            notes.append(f"clipped: {100 * fraction:.0f}% of samples at full scale")
    return notes


def wav_header_frames(path: str | os.PathLike) -> int | None:
    """Samples per channel that a RIFF/WAVE file's ``data`` chunk header announces; None when ``path`` is not such
    a file, cannot be read, or the size is unset (0 or 0xFFFFFFFF, as streaming writers leave it)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"fmt ":
                    body = handle.read(size + (size & 1))
                    if len(body) < 14:
                        return None
                    block_align = struct.unpack("<H", body[12:14])[0]
                elif name == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


def write_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> Path:
    """Write a mono waveform (float in [-1, 1], or int16) as a PCM16 WAV file, creating parent folders.

    Float samples are converted with :func:`to_int16` (clipped to [-1, 1], scaled by 32767, rounded).

    Args:
        path: Destination file.
        wave: 1-D samples.
        sample_rate: The waveform's rate, in Hz.

    Returns:
        The path written.
    """
    path = Path(path)
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"write_audio expects a 1-D mono waveform for {path}, got shape {wave.shape}")
    if wave.dtype != np.int16 and not np.isfinite(wave).all():
        raise ValueError(f"refusing to write non-finite samples to {path}")
    if wave.dtype != np.int16:
        wave = to_int16(wave)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, sample_rate, subtype="PCM_16", format="WAV")
    return path
