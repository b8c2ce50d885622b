"""Seeded N-way K-shot episodes over a pool of clips, each clip one or more segments.

A pool is described by tensors: ``clip_class[c]`` (the class of clip ``c``) and ``segment_clip[s]`` (the clip of
segment ``s``; a clip's segments are consecutive). Fixed-length sets have one segment per clip. An episode draws
``ways`` classes, then ``shots + queries`` distinct clips of each, without replacement; support and query are disjoint.
The support uses one random segment per clip; a query clip is classified by majority vote over all its segments.

Sampling is vectorised (random keys and top-k, no loop over episodes) and a pure function of ``(seed, episode)``:
episode ``e`` is the same whichever batch of episodes it is drawn in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch

from aiaudio.seeding import generator_for

log = logging.getLogger(__name__)

_CHUNK = 256  # episodes drawn per generator; episode e uses chunk e // _CHUNK, so any slicing gives the same draw


@dataclass(frozen=True)
class Episodes:
    """A batch of E episodes.

    Attributes:
        classes: ``[E, N]`` class index of each way.
        support_clips: ``[E, N, K]`` clip indices of the support set (way ``n`` has label ``n``).
        support_segments: ``[E, N, K]`` one segment index per support clip.
        query_clips: ``[E, N, Q]`` clip indices of the query set.
    """

    classes: torch.Tensor
    support_clips: torch.Tensor
    support_segments: torch.Tensor
    query_clips: torch.Tensor

    def __len__(self) -> int:
        return self.classes.shape[0]

    def subset(self, index: torch.Tensor | list[int]) -> Episodes:
        """The episodes at ``index``, in that order."""
        return Episodes(*(getattr(self, column.name)[index] for column in fields(self)))

    @property
    def ways(self) -> int:
        return self.classes.shape[1]

    def support_labels(self) -> torch.Tensor:
        """``[E, N * K]`` labels of the flattened support set (way index)."""
        e, n, k = self.support_clips.shape
        return torch.arange(n).repeat_interleave(k).expand(e, n * k).clone()

    def query_labels(self) -> torch.Tensor:
        """``[E, N * Q]`` labels of the flattened query clips."""
        e, n, q = self.query_clips.shape
        return torch.arange(n).repeat_interleave(q).expand(e, n * q).clone()


class SegmentPool:
    """Clips, their classes and their segments.

    Args:
        clip_class: ``[C]`` class index of each clip.
        segment_clip: ``[S]`` clip index of each segment, non-decreasing, every clip present.
    """

    def __init__(self, clip_class: torch.Tensor, segment_clip: torch.Tensor | None = None) -> None:
        self.clip_class = torch.as_tensor(clip_class, dtype=torch.long)
        num_clips = len(self.clip_class)
        if segment_clip is None:
            segment_clip = torch.arange(num_clips)
        self.segment_clip = torch.as_tensor(segment_clip, dtype=torch.long)
        counts = torch.bincount(self.segment_clip, minlength=num_clips)
        if len(counts) != num_clips or torch.any(counts == 0) or torch.any(self.segment_clip.diff() < 0):
            raise ValueError("segment_clip must list every clip's segments consecutively, in clip order")
        self.segment_count = counts
        self.first_segment = torch.cumsum(counts, 0) - counts

    @property
    def num_clips(self) -> int:
        return len(self.clip_class)

    def query_segments(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All segments of ``clips`` ``[..., m]``, padded per row: ``(segments [..., m, P], valid [..., m, P])``,
        P the most segments of any clip in ``clips``; padding repeats the clip's first segment and is not valid."""
        counts = self.segment_count[clips]
        width = int(counts.max()) if clips.numel() else 1
        offsets = torch.arange(width)
        valid = offsets < counts.unsqueeze(-1)
        segments = self.first_segment[clips].unsqueeze(-1) + torch.where(valid, offsets, 0)
        return segments, valid


class EpisodeSampler:
    """Seeded N-way K-shot episodes with Q queries per class over the clips of the given classes.

    Args:
        pool: the clips and segments.
        classes: the class indices episodes may use (e.g. the test classes); classes with fewer than
            ``shots + queries`` clips are left out (counted and logged).
        clips: optional ``[C]`` boolean mask of the clips episodes may use (a clip-level split, when validation and
            test share their classes).
        ways: N.
        shots: K.
        queries: Q.
        seed: the seed; episode ``e`` is a pure function of ``(seed, e)``.
    """

    def __init__(
        self, pool: SegmentPool, classes: list[int] | torch.Tensor, ways: int = 5, shots: int = 1, queries: int = 1,
        seed: int = 0, clips: torch.Tensor | None = None,
    ) -> None:
        if min(ways, shots, queries) < 1:
            raise ValueError(f"ways, shots and queries must be >= 1, got {ways}, {shots}, {queries}")
        self.pool, self.ways, self.shots, self.queries, self.seed = pool, ways, shots, queries, seed
        classes = torch.as_tensor(classes, dtype=torch.long).unique()
        allowed = torch.ones(pool.num_clips, dtype=torch.bool) if clips is None else torch.as_tensor(clips, dtype=torch.bool)
        if allowed.shape != (pool.num_clips,):
            raise ValueError(f"clips must be a mask of shape [{pool.num_clips}], got {list(allowed.shape)}")
        members = [torch.nonzero((pool.clip_class == c) & allowed).flatten() for c in classes.tolist()]
        keep = [i for i, m in enumerate(members) if len(m) >= shots + queries]
        if len(keep) < len(members):
            log.warning(
                "%d of %d classes have fewer than %d items (clips, images) and are left out of the episodes",
                len(members) - len(keep), len(members), shots + queries,
            )
        if len(keep) < ways:
            raise ValueError(
                f"{ways}-way {shots}-shot episodes with {queries} queries need {ways} classes with at least "
                f"{shots + queries} items (clips, images) each; lower episodes.queries or episodes.shots; only {len(keep)} of {len(members)} classes have that many"
            )
        self.classes = classes[keep]
        kept = [members[i] for i in keep]
        self.class_size = torch.tensor([len(m) for m in kept])
        self.members = torch.full((len(kept), int(self.class_size.max())), -1, dtype=torch.long)
        for row, m in enumerate(kept):
            self.members[row, : len(m)] = m

    def sample(self, count: int, start: int = 0) -> Episodes:
        """Episodes ``start`` to ``start + count - 1``."""
        if count < 1 or start < 0:
            raise ValueError(f"need count >= 1 and start >= 0, got {count}, {start}")
        parts = []
        for chunk in range(start // _CHUNK, (start + count - 1) // _CHUNK + 1):
            drawn = self._draw_chunk(chunk)
            low = max(start, chunk * _CHUNK) - chunk * _CHUNK
            high = min(start + count, (chunk + 1) * _CHUNK) - chunk * _CHUNK
            parts.append([t[low:high] for t in drawn])
        return Episodes(*(torch.cat(column) for column in zip(*parts)))

    def _draw_chunk(self, chunk: int) -> tuple[torch.Tensor, ...]:
        generator = generator_for(self.seed, chunk)
        num_classes, width = self.members.shape
        class_keys = torch.rand(_CHUNK, num_classes, generator=generator)
        way_rows = class_keys.topk(self.ways, dim=1).indices  # [E, N] rows of self.members
        member_keys = torch.rand(_CHUNK, self.ways, width, generator=generator)
        member_keys = member_keys.masked_fill(self.members[way_rows] < 0, -1.0)
        picked = member_keys.topk(self.shots + self.queries, dim=2).indices  # distinct members of each way
        clips = torch.gather(self.members[way_rows], 2, picked)
        support, query = clips[..., : self.shots], clips[..., self.shots :]
        offsets = torch.rand(support.shape, generator=generator) * self.pool.segment_count[support]
        segments = self.pool.first_segment[support] + offsets.long().clamp_max(self.pool.segment_count[support] - 1)
        return self.classes[way_rows], support, segments, query
