"""Throughput of the device image augmentations versus a ``torchvision.transforms.v2`` CPU pipeline; prints JSON.

Both make two normalised views (both groups on: random resized crop, flip, colour jitter, grayscale, blur) of uint8
images stored at ``--storage`` pixels, at ``--size`` pixels:

* ours: :class:`aivision.augment.ImageAugment` on whole batches on ``--device`` (on the CPU one process using every
  core through threads): on the CPU both backends, the fused native kernel (the default there) and the torch ops;
* reference: the MoCo-v2 / SimCLR ``torchvision.transforms.v2`` pipeline applied image by image on uint8 tensors in
  ``--workers`` single-threaded processes (default one per core), the layout of data-loader workers.

Targets: at least 5x on a 2-core CPU; at least 30,000 views/s on one H100 (``--device cuda``).

Example:
    python benchmarks/vision_augment_throughput.py --device cpu --seconds 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiaudio.engine.runtime import resolve_device, tune_cpu_allocator  # noqa: E402
from aivision.augment import ImageAugment, ImageAugmentConfig, ImageInput, group_space  # noqa: E402
from machine import command_line, commit, machine_info  # noqa: E402


def make_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 ``[count, 3, size, size]``: smooth random colour fields (so blur and jitter do real work)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (fine * 255).round().to(torch.uint8)


def simclr_blur_taps(size: int) -> int:
    """SimCLR's blur kernel: an odd number of taps near a tenth of the view (23 at 224 px)."""
    return 2 * ((size // 10) // 2) + 1


def reference_pipeline(size: int, blur_taps: int):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel_size=blur_taps, sigma=(0.1, 2.0))], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def _reference_worker(images: torch.Tensor, size: int, blur_taps: int, seconds: float, queue) -> None:
    torch.set_num_threads(1)
    pipeline = reference_pipeline(size, blur_taps)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        image = images[done % len(images)]
        pipeline(image)
        pipeline(image)
        done += 2
    queue.put((done, time.perf_counter() - start))


def reference_views_per_second(images: torch.Tensor, size: int, blur_taps: int, seconds: float, workers: int) -> float:
    context = mp.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_reference_worker, args=(images, size, blur_taps, seconds, queue))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    return sum(done / elapsed for done, elapsed in results)


def ours_views_per_second(
    images: torch.Tensor, size: int, batch: int, seconds: float, device: torch.device, backend: str = "auto",
) -> float:
    config = ImageAugmentConfig(backend=backend)
    augment = ImageAugment(config, group_space(), ImageInput(size)).to(device)
    descriptor = torch.ones(2)
    data = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(index: int) -> None:
        chunk = data[(index * batch) % (len(data) - batch + 1):][:batch]
        augment(chunk, descriptor, generator, 0)
        augment(chunk, descriptor, generator, 1)

    for index in range(2):  # warm-up
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(done)
        done += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * batch * done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=224, help="view size")
    parser.add_argument("--storage", type=int, default=256, help="stored image size the views are cut from")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 64 on the CPU")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per side")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reference processes")
    parser.add_argument("--reference-blur-taps", type=int, default=None,
                        help="the reference's blur kernel size (default SimCLR's, a tenth of the view: 23 at 224 px; "
                             "ours spans 3 sigma either side, at most 13 taps for sigma 2)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    batch = args.batch_size or (256 if device.type == "cuda" else 64)
    tuned = tune_cpu_allocator()
    images = make_images(max(args.images, batch), args.storage)
    ours = ours_views_per_second(images, args.size, batch, args.seconds, device)
    torch_path = ours_views_per_second(images, args.size, batch, args.seconds, device, "torch") \
        if device.type == "cpu" else ours
    blur_taps = args.reference_blur_taps or simclr_blur_taps(args.size)
    reference = reference_views_per_second(images[: min(len(images), 256)], args.size, blur_taps, args.seconds,
                                           args.workers)
    print(json.dumps({
        "benchmark": "vision_augment_throughput",
        "command": command_line(__file__, argv),
        "commit": commit(),
        "machine": machine_info(device),
        "config": {"size": args.size, "storage": args.storage, "batch_size": batch, "seconds": args.seconds,
                   "reference_workers": args.workers, "reference_blur_taps": blur_taps, "malloc_tuned": tuned,
                   "ops": "crop, flip, jitter, grayscale, blur"},
        "ours_views_per_s": round(ours, 1),
        "ours_torch_ops_views_per_s": round(torch_path, 1),
        "reference_views_per_s": round(reference, 1),
        "speedup": round(ours / reference, 2),
        "speedup_torch_ops": round(torch_path / reference, 2),
        "target_speedup_cpu": 5.0,
        "target_views_per_s_h100": 30000,
    }, indent=2))


if __name__ == "__main__":
    main()
